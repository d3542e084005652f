# Finds protobuf and gRPC C++ and defines the imported targets
# pipehost::protobuf and pipehost::grpcpp plus PIPEHOST_PROTOC and
# PIPEHOST_GRPC_CPP_PLUGIN.
#
# With PIPEHOST_STATIC_GRPC (default ON) and the static archives installed
# (Debian's libgrpc++-dev has them), gRPC without TLS (grpc++_unsecure),
# protobuf and Abseil are linked statically: a plugin then starts in a few
# milliseconds instead of spending most of its launch resolving symbols of
# fifty shared libraries. Otherwise gRPC's CMake package is tried, then
# pkg-config (some distributions ship a broken or no CMake package).
include_guard(GLOBAL)
find_package(Threads REQUIRED)
find_package(PkgConfig)
option(PIPEHOST_STATIC_GRPC "Link gRPC, protobuf and Abseil statically when their archives exist" ON)

if(PIPEHOST_STATIC_GRPC AND PKG_CONFIG_FOUND AND NOT TARGET pipehost::grpcpp)
  execute_process(COMMAND ${PKG_CONFIG_EXECUTABLE} --libs --static grpc++_unsecure protobuf
    OUTPUT_VARIABLE _ph_static_flags RESULT_VARIABLE _ph_pc_result ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
  find_library(_ph_grpc_archive NAMES libgrpc++_unsecure.a)
  find_library(_ph_protobuf_archive NAMES libprotobuf.a)
  if(_ph_pc_result EQUAL 0 AND _ph_grpc_archive AND _ph_protobuf_archive)
    separate_arguments(_ph_static_flags UNIX_COMMAND "${_ph_static_flags}")
    # Some .pc files leave out gRPC's own private archives; inside a link
    # group an unneeded archive costs nothing.
    list(APPEND _ph_static_flags -lupb -lre2 -lcares -laddress_sorting -lgpr -lz)
    set(_ph_archives)
    set(_ph_system)
    foreach(_f IN LISTS _ph_static_flags)
      if(_f MATCHES "^-l(.+)$")
        set(_name "${CMAKE_MATCH_1}")
        set(_archive "")
        if(NOT _name MATCHES "^(rt|m|dl|pthread|atomic|c|stdc\\+\\+|gcc_s|systemd)$")
          find_library(_ph_archive_${_name} NAMES lib${_name}.a)
          set(_archive "${_ph_archive_${_name}}")
          unset(_ph_archive_${_name} CACHE)
        endif()
        if(_archive)
          list(APPEND _ph_archives "${_archive}")
        elseif(NOT _name MATCHES "^(upb|re2|cares|address_sorting)$")
          list(APPEND _ph_system "${_f}")
        endif()
      endif()
    endforeach()
    list(REMOVE_DUPLICATES _ph_archives)
    list(REMOVE_DUPLICATES _ph_system)
    add_library(pipehost::grpcpp INTERFACE IMPORTED)
    target_link_libraries(pipehost::grpcpp INTERFACE
      "-Wl,--start-group" ${_ph_archives} "-Wl,--end-group" ${_ph_system} Threads::Threads)
    add_library(pipehost::protobuf INTERFACE IMPORTED)
    get_filename_component(_ph_libdir "${_ph_grpc_archive}" DIRECTORY)
    set(PIPEHOST_GRPC_LINKAGE "static (${_ph_libdir})")
  endif()
endif()

if(NOT TARGET pipehost::grpcpp)
find_package(Protobuf QUIET CONFIG)
if(NOT Protobuf_FOUND)
  find_package(Protobuf QUIET MODULE)
endif()
if(TARGET protobuf::libprotobuf)
  add_library(pipehost::protobuf INTERFACE IMPORTED)
  target_link_libraries(pipehost::protobuf INTERFACE protobuf::libprotobuf)
else()
  pkg_check_modules(PIPEHOST_PROTOBUF REQUIRED IMPORTED_TARGET protobuf)
  add_library(pipehost::protobuf INTERFACE IMPORTED)
  target_link_libraries(pipehost::protobuf INTERFACE PkgConfig::PIPEHOST_PROTOBUF)
endif()

find_package(gRPC CONFIG QUIET)
if(TARGET gRPC::grpc++)
  add_library(pipehost::grpcpp INTERFACE IMPORTED)
  target_link_libraries(pipehost::grpcpp INTERFACE gRPC::grpc++)
else()
  pkg_check_modules(PIPEHOST_GRPCPP REQUIRED IMPORTED_TARGET grpc++)
  add_library(pipehost::grpcpp INTERFACE IMPORTED)
  target_link_libraries(pipehost::grpcpp INTERFACE PkgConfig::PIPEHOST_GRPCPP)
endif()
set(PIPEHOST_GRPC_LINKAGE "shared")
endif()
message(STATUS "pipehost: gRPC linked ${PIPEHOST_GRPC_LINKAGE}")

find_program(PIPEHOST_PROTOC NAMES protoc REQUIRED)
find_program(PIPEHOST_GRPC_CPP_PLUGIN NAMES grpc_cpp_plugin REQUIRED)
