from ditas_trt.cli import entry

entry()
