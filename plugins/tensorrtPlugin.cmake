# libditas_trt_plugin.so: the TensorRT IPluginV3 plugins (w4a8LoraGemm/w4a8LoraGemmPlugin.cpp) with the kernels of
# ditas_kernels_static linked in, so the plugin library is one self-contained file (cudart static; no link against
# libnvinfer / libtensorrt_rtx: TensorRT resolves getCreators + setLoggerFinder when it loads the library).
#
#   -DTENSORRT_INCLUDE_DIR=/usr/include/x86_64-linux-gnu   (or $TENSORRT_INCLUDE_DIR; NGC TensorRT images; default:
#                                                          the kernel-lens wheel's TensorRT 10.14 headers, enough
#                                                          for IPluginV3, then the usual system folders)
#   -DDITAS_BUILD_TRT_PLUGIN=OFF                           (kernels only)
option(DITAS_BUILD_TRT_PLUGIN "Build libditas_trt_plugin.so (needs TensorRT headers)" ON)
set(TENSORRT_INCLUDE_DIR "" CACHE PATH "Folder holding NvInferRuntime.h (default: kernel-lens wheel, then system paths)")

if(DITAS_BUILD_TRT_PLUGIN)
    set(_ditas_trt_inc "${TENSORRT_INCLUDE_DIR}")
    if(NOT _ditas_trt_inc AND DEFINED ENV{TENSORRT_INCLUDE_DIR})
        set(_ditas_trt_inc "$ENV{TENSORRT_INCLUDE_DIR}") # e.g. set in docker/Dockerfile.build
    endif()
    if(NOT _ditas_trt_inc)
        find_package(Python3 COMPONENTS Interpreter QUIET)
        if(Python3_Interpreter_FOUND)
            execute_process(
                COMMAND "${Python3_EXECUTABLE}" -c
                        "import kernel_lens, os; print(os.path.join(os.path.dirname(kernel_lens.__file__), 'include', 'tensorrt'))"
                OUTPUT_VARIABLE _ditas_trt_inc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
        endif()
    endif()
    if(NOT _ditas_trt_inc OR NOT EXISTS "${_ditas_trt_inc}/NvInferRuntime.h")
        find_path(_ditas_trt_inc_found NvInferRuntime.h
                  PATHS /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu /usr/local/tensorrt/include
                        /opt/tensorrt/include)
        set(_ditas_trt_inc "${_ditas_trt_inc_found}")
    endif()
    if(NOT _ditas_trt_inc OR NOT EXISTS "${_ditas_trt_inc}/NvInferRuntime.h")
        message(WARNING "ditas: TensorRT headers not found (pip install kernel-lens==2.0.1 or set TENSORRT_INCLUDE_DIR); "
                        "not building libditas_trt_plugin.so")
    else()
        message(STATUS "ditas: TensorRT plugin against headers in ${_ditas_trt_inc}")
        find_package(CUDAToolkit REQUIRED) # imported targets are directory-scoped
        add_library(ditas_trt_plugin SHARED
            w4a8LoraGemm/w4a8LoraGemmPlugin.cpp
            w4a8LoraGemm/ditasTrtPluginLibrary.cpp)
        target_include_directories(ditas_trt_plugin SYSTEM PRIVATE "${_ditas_trt_inc}")
        target_link_libraries(ditas_trt_plugin PRIVATE ditas_kernels_static CUDA::cudart_static)
        # Export only the TensorRT entry points: the kernels' C API stays private, so this library and
        # libditas_kernels.so (torch op) can live in one process.
        target_link_options(ditas_trt_plugin PRIVATE
            "LINKER:--version-script=${CMAKE_CURRENT_SOURCE_DIR}/w4a8LoraGemm/pluginExports.map"
            "LINKER:--exclude-libs,ALL" "LINKER:--no-undefined")
        set_target_properties(ditas_trt_plugin PROPERTIES
            LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}
            LINK_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/w4a8LoraGemm/pluginExports.map)
    endif()
endif()

# Host-only contract test of the plugin (fields, input layout, types, shapes, workspace): ctest -R trt_plugin
if(TARGET ditas_trt_plugin)
    enable_testing()
    add_executable(ditas_trt_plugin_test w4a8LoraGemm/test/pluginTest.cpp w4a8LoraGemm/w4a8LoraGemmPlugin.cpp)
    target_include_directories(ditas_trt_plugin_test SYSTEM PRIVATE "${_ditas_trt_inc}")
    target_link_libraries(ditas_trt_plugin_test PRIVATE ditas_kernels_static CUDA::cudart_static)
    set_target_properties(ditas_trt_plugin_test PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
    add_test(NAME trt_plugin COMMAND ditas_trt_plugin_test)
endif()
