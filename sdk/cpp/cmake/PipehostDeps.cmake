# Finds protobuf and gRPC C++ and defines the imported targets
# pipehost::protobuf and pipehost::grpcpp plus PIPEHOST_PROTOC and
# PIPEHOST_GRPC_CPP_PLUGIN. gRPC's CMake package is tried first; some
# distributions ship a broken or no package file, so pkg-config is the
# fallback.
include_guard(GLOBAL)
find_package(Threads REQUIRED)

find_package(Protobuf QUIET CONFIG)
if(NOT Protobuf_FOUND)
  find_package(Protobuf QUIET MODULE)
endif()
if(TARGET protobuf::libprotobuf)
  add_library(pipehost::protobuf INTERFACE IMPORTED)
  target_link_libraries(pipehost::protobuf INTERFACE protobuf::libprotobuf)
else()
  find_package(PkgConfig REQUIRED)
  pkg_check_modules(PIPEHOST_PROTOBUF REQUIRED IMPORTED_TARGET protobuf)
  add_library(pipehost::protobuf INTERFACE IMPORTED)
  target_link_libraries(pipehost::protobuf INTERFACE PkgConfig::PIPEHOST_PROTOBUF)
endif()

find_package(gRPC CONFIG QUIET)
if(TARGET gRPC::grpc++)
  add_library(pipehost::grpcpp INTERFACE IMPORTED)
  target_link_libraries(pipehost::grpcpp INTERFACE gRPC::grpc++)
else()
  find_package(PkgConfig REQUIRED)
  pkg_check_modules(PIPEHOST_GRPCPP REQUIRED IMPORTED_TARGET grpc++)
  add_library(pipehost::grpcpp INTERFACE IMPORTED)
  target_link_libraries(pipehost::grpcpp INTERFACE PkgConfig::PIPEHOST_GRPCPP)
endif()

find_program(PIPEHOST_PROTOC NAMES protoc REQUIRED)
find_program(PIPEHOST_GRPC_CPP_PLUGIN NAMES grpc_cpp_plugin REQUIRED)
