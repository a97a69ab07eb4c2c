"""The ``TritonPythonModel`` classes of the generated repository; they run inside Triton's Python-backend stub.

``DenoiserModel``: one ``execute`` receives a whole dynamic batch (requests from several sampling loops, each at
its own timestep), concatenates it, runs one DiT forward (torch FP / quantized, onnxruntime or a TensorRT plan
through :mod:`ditas_trt.engine.runtime`) and splits the output.

``SamplerModel``: parses and validates each request (invalid ones get an error response, the rest are served),
groups rows with the same sampling settings and runs :func:`ditas_trt.diffusion.sampling.sample` for each group
with a forward that is one BLS request to the denoiser per step. Initial and step noise come from per-sample
generators (:func:`seeded_noise`), so an image depends only on its seed, exactly as in ``Denoiser.generate``.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

try:  # only importable inside the stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - imported outside Triton (docs, linters)
    pb_utils = None

NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64}


def _check_numpy() -> None:
    if int(np.__version__.split(".")[0]) >= 2:
        raise RuntimeError(f"numpy {np.__version__} in the Triton Python stub; nvidia-pytriton's stub needs numpy < 2 "
                           "(install numpy<2 where DITAS_TRT_PYTHONPATH points)")


def _parameters(model_config: dict) -> dict:
    return {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}


def _error(message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def _to_torch(tensor):
    import torch

    if tensor.is_cpu():
        return torch.from_numpy(np.array(tensor.as_numpy()))
    return torch.from_dlpack(tensor.to_dlpack()).cpu()


# ---------------------------------------------------------------------------------------------------------------
# Denoiser
# ---------------------------------------------------------------------------------------------------------------
class DenoiserModel:
    """Dynamically batched DiT forward ``(x, t, y) -> out`` over any ditas-trt backend."""

    def initialize(self, args):
        import torch

        from ditas_trt.backends import load_denoiser

        _check_numpy()
        config = json.loads(args["model_config"])
        params = _parameters(config)
        threads = int(params.get("threads") or 0)
        if threads:
            torch.set_num_threads(threads)
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        source = str(version_dir / params["source"])
        kind = params["source_kind"]
        device = params.get("device") or "cpu"
        if device.startswith("cuda") and args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        kwargs = {"device": device}
        if kind == "engine":
            plugin = params.get("plugin_lib")
            kwargs.update(engine=source, plugin_lib=str(version_dir / plugin) if plugin else None)
        elif kind == "onnx":
            kwargs.update(onnx=source)
        elif kind == "quantized":
            kwargs.update(quantized=source)
        self.denoiser = load_denoiser(source if kind == "checkpoint" else None, params.get("model") or None, **kwargs)
        self.num_classes = self.denoiser.config.num_classes

    def execute(self, requests):
        import torch

        responses = [None] * len(requests)
        xs, ts, ys, members = [], [], [], []
        for i, request in enumerate(requests):
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            t = pb_utils.get_input_tensor_by_name(request, "t").as_numpy().reshape(-1)
            y = pb_utils.get_input_tensor_by_name(request, "y").as_numpy().reshape(-1)
            if y.size and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
                responses[i] = _error(f"y must be in [0, {self.num_classes}] ({self.num_classes} = null class)")
                continue
            xs.append(x), ts.append(t), ys.append(y), members.append((i, x.shape[0]))
        if members:
            x = torch.from_numpy(np.concatenate(xs).astype(np.float32, copy=False))
            t = torch.from_numpy(np.concatenate(ts).astype(np.float32, copy=False))
            y = torch.from_numpy(np.concatenate(ys).astype(np.int64, copy=False))
            try:
                with torch.no_grad():
                    out = self.denoiser.forward(x, t, y).float().cpu().numpy()
            except Exception as exc:  # noqa: BLE001 - every request of the batch gets the message
                for i, _ in members:
                    responses[i] = _error(f"denoiser failed: {exc}")
                return responses
            start = 0
            for i, n in members:
                responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor("out", out[start:start + n])])
                start += n
        return responses


# ---------------------------------------------------------------------------------------------------------------
# Sampler (BLS)
# ---------------------------------------------------------------------------------------------------------------
class SamplerModel:
    """The diffusion loop with classifier-free guidance; each denoising step is one BLS call to the denoiser."""

    def initialize(self, args):
        import torch

        from ditas_trt.models.dit import DiTConfig

        _check_numpy()
        torch.set_num_threads(1)  # the loop's arithmetic is tiny; the denoiser gets the cores
        config = json.loads(args["model_config"])
        params = _parameters(config)
        self.dit = DiTConfig(**json.loads(params["dit_config"]))
        self.denoiser_name = params.get("denoiser_model") or "denoiser"
        self.max_rows = max(1, int(params.get("denoiser_max_batch") or 64))
        self.io = {k: NP_DTYPES[v] for k, v in json.loads(params.get("denoiser_io") or "{}").items()}
        self.max_steps = int(params.get("max_steps") or 1000)
        self.outputs = {o["name"] for o in config.get("output", [])}

    # -- parsing -------------------------------------------------------------------------------------------------
    def _parse(self, request) -> list:
        from ditas_trt.diffusion.sampling import SamplingOptions

        def column(name, required=True):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                if required:
                    raise ValueError(f"missing input '{name}'")
                return None
            return tensor.as_numpy().reshape(-1)

        labels, seeds = column("class_label"), column("seed")
        steps, cfg = column("steps"), column("cfg_scale")
        kinds, etas = column("sampler", False), column("eta", False)
        rows = []
        for j in range(len(labels)):
            label, seed, n_steps, scale = int(labels[j]), int(seeds[j]), int(steps[j]), float(cfg[j])
            kind = "ddpm" if kinds is None else kinds[j]
            kind = kind.decode("utf-8", "replace") if isinstance(kind, bytes) else str(kind)
            eta = 0.0 if etas is None else float(etas[j])
            if not 0 <= label < self.dit.num_classes:
                raise ValueError(f"class_label {label} outside [0, {self.dit.num_classes - 1}]")
            if seed < 0:
                raise ValueError(f"seed must be >= 0, got {seed}")
            if n_steps > self.max_steps:
                raise ValueError(f"steps must be at most {self.max_steps} on this server, got {n_steps}")
            # steps, sampler, finite cfg scale and eta, DDIM step counts: the same checks as `ditas-trt sample`
            options = SamplingOptions(steps=n_steps, sampler=kind, cfg_scale=scale, eta=eta).validate()
            rows.append((label, seed, options))
        return rows

    # -- the loop ------------------------------------------------------------------------------------------------
    def _forward(self, x, t, y):
        import torch

        request = pb_utils.InferenceRequest(
            model_name=self.denoiser_name, requested_output_names=["out"],
            inputs=[pb_utils.Tensor("x", x.numpy().astype(self.io.get("x", np.float32), copy=False)),
                    pb_utils.Tensor("t", t.reshape(-1, 1).float().numpy().astype(self.io.get("t", np.float32))),
                    pb_utils.Tensor("y", y.reshape(-1, 1).numpy().astype(self.io.get("y", np.int32)))])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"denoiser: {response.error().message()}")
        return _to_torch(pb_utils.get_output_tensor_by_name(response, "out")).to(torch.float32)

    def _sample(self, options, labels, seeds):
        import torch

        from ditas_trt.diffusion.sampling import sample, seeded_noise

        c = self.dit
        noise, generators = seeded_noise(seeds, (c.in_channels, c.input_size, c.input_size))
        with torch.no_grad():
            return sample(self._forward, torch.tensor(labels), in_channels=c.in_channels, input_size=c.input_size,
                          num_classes=c.num_classes, options=options, noise=noise, generator=generators,
                          learn_sigma=c.learn_sigma)

    def execute(self, requests):
        import torch

        errors, parsed = {}, {}
        for i, request in enumerate(requests):
            try:
                parsed[i] = self._parse(request)
            except Exception as exc:  # noqa: BLE001 - DitasError, ValueError: the client's mistake
                errors[i] = f"invalid request: {exc}"
        groups = defaultdict(list)
        for i, rows in parsed.items():
            for j, (label, seed, options) in enumerate(rows):
                key = (options.steps, options.sampler, options.cfg_scale, options.eta)
                groups[key].append((i, j, label, seed, options))
        latents = {}
        for members in groups.values():
            per_call = max(1, self.max_rows // (2 if members[0][4].cfg_scale > 1 else 1))
            for start in range(0, len(members), per_call):
                chunk = [m for m in members[start:start + per_call] if m[0] not in errors]
                if not chunk:
                    continue
                try:
                    out = self._sample(chunk[0][4], [m[2] for m in chunk], [m[3] for m in chunk])
                except Exception as exc:  # noqa: BLE001 - reported to the requests of this chunk
                    for m in chunk:
                        errors.setdefault(m[0], f"sampling failed: {exc}")
                    continue
                for m, latent in zip(chunk, out):
                    latents[(m[0], m[1])] = latent
        responses = []
        for i in range(len(requests)):
            if i in errors:
                responses.append(_error(errors[i]))
                continue
            latent = torch.stack([latents[(i, j)] for j in range(len(parsed[i]))]).float()
            tensors = [pb_utils.Tensor("latent", latent.numpy())]
            if "image" in self.outputs:
                image = ((latent.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
                tensors.append(pb_utils.Tensor("image", image.contiguous().numpy()))
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
