"""CPU tests of the CUDA kernel package: host replay of the fragment math, the C API header vs the ctypes
signatures, the built library's exports and argument checks, and the missing-library error. No GPU needed."""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import without_gpu
from ditas_trt.errors import DitasError
from ditas_trt.ops import cuda as kcuda
from ditas_trt.quant import format as fmt

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DIR = ROOT / "plugins" / "w4a8LoraGemm"
HEADER = KERNEL_DIR / "ditasKernels.h"
EXPECTED_SYMBOLS = sorted(kcuda.SIGNATURES)


def _built_library() -> Path | None:
    for path in kcuda.library_candidates():
        if path.is_file():
            return path
    return None


def _cxx() -> str | None:
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


# ---------------------------------------------------------------------------------------------------------------
# Fragment math, replayed on the host
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fragment_test_binary(tmp_path_factory) -> Path:
    cxx = _cxx()
    if cxx is None:
        pytest.skip("no C++ compiler")
    out = tmp_path_factory.mktemp("fragmath") / "fragmentMathTest"
    subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Werror", f"-I{KERNEL_DIR}",
                    str(KERNEL_DIR / "test" / "fragmentMathTest.cpp"), "-o", str(out)], check=True)
    return out


def test_fragment_math_host_replay(fragment_test_binary):
    """Every (m, n, k) of each warp tile through the kernels' address / unpack / fragment helpers and a model of
    mma.sync and ldmatrix gives the exact product; shared-memory accesses are bank-conflict free."""
    run = subprocess.run([str(fragment_test_binary)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "fragment math OK" in run.stdout


def test_int4_unpack_matches_format(fragment_test_binary):
    """unpackInt4x8 of the word b*0x01010101 equals 16 x unpack_int4 of four copies of byte b, in k order."""
    run = subprocess.run([str(fragment_test_binary), "--dump-unpack"], capture_output=True, text=True, check=True)
    got = torch.tensor([[int(v) for v in line.split()] for line in run.stdout.strip().splitlines()])
    packed = torch.arange(256, dtype=torch.uint8).reshape(256, 1).repeat(1, 4)  # [256, 4] bytes = 8 codes
    want = fmt.unpack_int4(packed).to(torch.int32) * 16
    assert got.shape == (256, 8)
    assert torch.equal(got, want)


# ---------------------------------------------------------------------------------------------------------------
# C API header vs ctypes
# ---------------------------------------------------------------------------------------------------------------
def _parse_header() -> dict[str, tuple[str, list[str]]]:
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    protos = {}
    for ret, name, params in re.findall(r"DITAS_API\s+([\w\s\*]+?)\s*(\w+)\s*\(([^)]*)\)\s*;", text):
        plist = [p.strip() for p in params.split(",") if p.strip()]
        if plist == ["void"]:
            plist = []
        protos[name] = (" ".join(ret.split()), plist)
    return protos


def _ctype_of(decl: str, *, is_return: bool = False):
    decl = " ".join(decl.replace("*", " * ").split())
    if decl.startswith("const char *") and is_return:
        return ctypes.c_char_p
    if "*" in decl or decl.split()[0] == "ditasStream_t":
        return ctypes.c_void_p
    if decl.split()[0] == "int":
        return ctypes.c_int
    raise AssertionError(f"unmapped C type in {decl!r}")


def test_header_matches_ctypes_signatures():
    protos = _parse_header()
    assert sorted(protos) == EXPECTED_SYMBOLS
    for name, (ret, params) in protos.items():
        restype, argtypes = kcuda.SIGNATURES[name]
        assert _ctype_of(ret, is_return=True) is restype, name
        assert [_ctype_of(p) for p in params] == argtypes, name


def test_header_constants_match_python():
    text = HEADER.read_text()
    consts = dict(re.findall(r"#define (DITAS_\w+) (\d+)", text))
    assert int(consts["DITAS_KERNELS_API_VERSION"]) == kcuda.API_VERSION
    for name, code in kcuda.PATHS.items():
        assert int(consts["DITAS_PATH_" + name.upper().replace("-", "_")]) == code
    assert int(consts["DITAS_DTYPE_FP16"]) == 0 and int(consts["DITAS_DTYPE_FP32"]) == 1


@pytest.mark.parametrize("lang", ["c", "c++"])
def test_header_is_self_contained(tmp_path, lang):
    """The C API header needs no CUDA, torch or TensorRT header (compiles alone as C and as C++)."""
    compiler = shutil.which("gcc" if lang == "c" else "g++")
    if compiler is None:
        pytest.skip(f"no {lang} compiler")
    src = tmp_path / ("t.c" if lang == "c" else "t.cpp")
    src.write_text('#include "ditasKernels.h"\nint main(void) { ditasStream_t s = 0; (void) s; return ditasKernelsApiVersion() == 0; }\n')
    subprocess.run([compiler, "-fsyntax-only", "-Wall", "-Werror", f"-I{KERNEL_DIR}", str(src)], check=True)


# ---------------------------------------------------------------------------------------------------------------
# The built library (skipped until scripts/build_plugins.sh has run)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built_library() -> Path:
    path = _built_library()
    if path is None:
        pytest.skip(f"{kcuda.LIB_NAME} not built (run {kcuda.BUILD_COMMAND})")
    return path


def test_library_exports_only_the_c_api(built_library):
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm")
    out = subprocess.run([nm, "-D", "--defined-only", str(built_library)], capture_output=True, text=True, check=True)
    exported = sorted(line.split()[-1] for line in out.stdout.splitlines() if line.split()[1:2] == ["T"])
    assert exported == EXPECTED_SYMBOLS


def test_library_has_no_cuda_runtime_dependency(built_library):
    """cudart is linked statically and libcuda is reached through the runtime: the .so loads without a driver."""
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("no readelf")
    out = subprocess.run([readelf, "-d", str(built_library)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\).*\[(.*)\]", out)
    assert not [lib for lib in needed if "cuda" in lib or "nvinfer" in lib or "torch" in lib], needed


def _raw_library(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name, (restype, argtypes) in kcuda.SIGNATURES.items():
        getattr(lib, name).restype = restype
        getattr(lib, name).argtypes = argtypes
    return lib


def test_library_build_info(built_library):
    lib = _raw_library(built_library)
    assert lib.ditasKernelsApiVersion() == kcuda.API_VERSION
    info = lib.ditasKernelsBuildInfo().decode()
    assert info.startswith(f"api={kcuda.API_VERSION} archs=")


@pytest.mark.parametrize(
    "call, message",
    [
        # (x_q, x_scale, per_row, qweight, w_scale, groups, bias, lora_act, lora_up, rank, y, dtype, M, N, K, path)
        (lambda lib: lib.ditasW4A8Gemm(1, 1, 0, 1, 1, 1, None, None, None, 0, 1, 0, 4, 8, 63, 0, None), "even K"),
        (lambda lib: lib.ditasW4A8Gemm(1, 1, 0, 1, 1, 5, None, None, None, 0, 1, 0, 4, 8, 64, 0, None), "does not divide"),
        (lambda lib: lib.ditasW8A8Gemm(1, 1, 0, 1, 1, 1, None, None, None, 0, 1, 2, 4, 8, 64, 0, None), "yDtype"),
        (lambda lib: lib.ditasW8A8Gemm(1, 1, 0, 1, 1, 1, None, None, None, 32, 1, 0, 4, 8, 64, 0, None), "rank=32"),
        (lambda lib: lib.ditasW4A8Gemm(1, None, 0, 1, 1, 1, None, None, None, 0, 1, 0, 4, 8, 64, 0, None), "x_scale"),
        (lambda lib: lib.ditasW4A8Gemm(1, 1, 0, 1, 1, 1, None, None, None, 0, 1, 0, -1, 8, 64, 0, None), "bad sizes"),
        (lambda lib: lib.ditasQuantizeAct(1, 3, None, None, None, 0, 1, 1, None, 4, 64, 0, None), "xDtype"),
        (lambda lib: lib.ditasQuantizeAct(1, 0, None, None, None, 16, 1, 1, None, 4, 64, 0, None), "lora_down"),
        (lambda lib: lib.ditasQuantizeAct(1, 0, None, None, None, 0, 1, 1, None, 4, 64, 3, None), "path"),
        (lambda lib: lib.ditasW4A8GemmAccumulators(1, 1, 1, 4, 8, 64, 3, None), "no INT32 output"),
    ],
)
def test_library_rejects_bad_arguments_without_a_gpu(built_library, call, message):
    """Argument checks run before any CUDA call: error 1 (cudaErrorInvalidValue) and a message, no crash."""
    lib = _raw_library(built_library)
    assert call(lib) == 1
    assert message in lib.ditasGetLastErrorString().decode()


@without_gpu
def test_library_reports_cuda_errors_without_a_gpu(built_library):
    lib = _raw_library(built_library)
    rc = lib.ditasW4A8Gemm(256, 256, 0, 256, 256, 1, None, None, None, 0, 256, 0, 4, 8, 64, 0, None)
    assert rc not in (0, 1)
    assert "CUDA error" in lib.ditasGetLastErrorString().decode()
    assert lib.ditasW4A8Gemm(256, 256, 0, 256, 256, 1, None, None, None, 0, 256, 0, 0, 8, 64, 0, None) == 0  # M = 0


def test_library_accepts_an_empty_batch_without_storage(built_library):
    """M = 0: the [0, ...] tensors have no storage (torch's data_ptr() is 0, TensorRT may pass nullptr), nothing is
    launched, so a null x, x_q, x_scale, lora_act or y is fine then; with M > 0 the same calls are refused."""
    lib = _raw_library(built_library)
    # (x_q, x_scale, per_row, qweight, w_scale, groups, bias, lora_act, lora_up, rank, y, dtype, M, N, K, path)
    assert lib.ditasW4A8Gemm(None, None, 1, 256, 256, 1, None, None, 256, 32, None, 0, 0, 8, 64, 0, None) == 0
    assert lib.ditasW8A8Gemm(None, None, 1, 256, 256, 2, None, None, 256, 32, None, 1, 0, 8, 64, 0, None) == 0
    assert lib.ditasW4A8GemmAccumulators(None, 256, None, 0, 8, 64, 0, None) == 0
    # (x, xDtype, act_scale, prescale, lora_down, rank, x_q, x_scale, lora_act, M, K, path): dynamic scale, LoRA
    assert lib.ditasQuantizeAct(None, 0, None, None, 256, 16, None, None, None, 0, 64, 0, None) == 0
    # still refused: a static scale must be reported into x_scale, and M > 0 needs every pointer
    assert lib.ditasQuantizeAct(None, 0, 256, None, None, 0, None, None, None, 0, 64, 0, None) == 1
    assert "x_scale" in lib.ditasGetLastErrorString().decode()
    assert lib.ditasQuantizeAct(256, 0, None, None, 256, 16, 256, 256, None, 4, 64, 0, None) == 1
    assert "lora_act" in lib.ditasGetLastErrorString().decode()
    assert lib.ditasW4A8Gemm(256, 256, 1, 256, 256, 1, None, None, None, 0, None, 0, 4, 8, 64, 0, None) == 1
    assert "output" in lib.ditasGetLastErrorString().decode()
    assert lib.ditasW4A8Gemm(256, 256, 1, 256, 256, 1, None, None, 256, 32, 256, 0, 4, 8, 64, 0, None) == 1
    assert "lora_act" in lib.ditasGetLastErrorString().decode()
    # shape errors are still reported for an empty batch
    assert lib.ditasW4A8Gemm(None, None, 1, 256, 256, 5, None, None, None, 0, None, 0, 0, 8, 64, 0, None) == 1
    assert "does not divide" in lib.ditasGetLastErrorString().decode()


# ---------------------------------------------------------------------------------------------------------------
# Python side
# ---------------------------------------------------------------------------------------------------------------
def test_missing_library_error_names_path_and_build_command(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / kcuda.LIB_NAME
    monkeypatch.setenv(kcuda.ENV_VAR, str(missing))
    monkeypatch.setattr(kcuda, "_lib", None)
    with pytest.raises(DitasError) as info:
        kcuda.load_library()
    assert str(missing) in str(info.value)
    assert kcuda.BUILD_COMMAND in str(info.value)
    assert not kcuda.is_available()


def test_library_candidates_default_to_the_build_folder(monkeypatch):
    monkeypatch.delenv(kcuda.ENV_VAR, raising=False)
    first = kcuda.library_candidates()[0]
    assert first == ROOT / "plugins" / "build" / kcuda.LIB_NAME


def test_import_loads_nothing_and_cpu_ops_work_without_library(tmp_path):
    """Importing the ops and running them on CPU neither compiles nor loads the CUDA library."""
    code = (
        "import torch, ditas_trt.ops as ops\n"
        "from ditas_trt.ops import cuda\n"
        "x = torch.randn(3, 64)\n"
        "q, s, l = ops.quantize_activation(x)\n"
        "w = torch.randint(0, 255, (8, 32), dtype=torch.uint8)\n"
        "y = ops.w4a8_gemm(q, s, w, torch.rand(8, 1))\n"
        "assert y.shape == (3, 8) and cuda._lib is None\n"
        "print('ok')\n"
    )
    env = dict(os.environ, **{kcuda.ENV_VAR: str(tmp_path / "missing.so")})
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


def test_cuda_kernels_are_registered():
    for op in ("quantize_act", "w4a8_gemm", "w8a8_gemm"):
        handle = getattr(torch.ops.ditas_trt, op).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(handle.name(), "CUDA"), op
