"""Health checking and server reflection, checked with the stock grpcio clients.

Usage: health_reflection.py --port PORT
The server under test registers the interop TestService, health and reflection, plus a
test-only control method `/shardlog.test.HealthControl/Set` (request HealthCheckRequest
whose `service` is "<name>=<SERVING|NOT_SERVING>", or "=DRAIN" for
`HealthReporter::set_all_not_serving`) so Watch can be shown to stream changes.
Exit 0 when every check passed.
"""

import argparse
import queue
import sys
import threading

import common

common.require_modules()

import grpc  # noqa: E402
from google.protobuf import descriptor_pb2, descriptor_pool  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # noqa: E402
    ProtoReflectionDescriptorDatabase)

TIMEOUT_S = 20
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
EXPECTED_SERVICES = {
    "grpc.testing.TestService", "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection",
}


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def set_health(channel, service, status):
    control = channel.unary_unary(
        "/shardlog.test.HealthControl/Set",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString)
    control(health_pb2.HealthCheckRequest(service=f"{service}={status}"), timeout=TIMEOUT_S)


def health_check(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "grpc.testing.TestService"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        check(response.status == SERVING, f"Check({service!r}) = {response.status}")
    statuses = stub.List(health_pb2.HealthListRequest(), timeout=TIMEOUT_S).statuses
    check(statuses["grpc.testing.TestService"].status == SERVING, f"List: {statuses}")
    try:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT_S)
        raise AssertionError("Check(unknown) succeeded")
    except grpc.RpcError as err:
        check(err.code() == grpc.StatusCode.NOT_FOUND, f"Check(unknown) -> {err.code()}")


def next_status(updates):
    return updates.get(timeout=TIMEOUT_S)


def health_watch(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    call = stub.Watch(health_pb2.HealthCheckRequest(service="watched.Service"), timeout=TIMEOUT_S)
    updates = queue.Queue()

    def pump():
        try:
            for response in call:
                updates.put(response.status)
        except grpc.RpcError as err:
            updates.put(err.code())

    threading.Thread(target=pump, daemon=True).start()
    check(next_status(updates) == SERVICE_UNKNOWN, "Watch(unknown) did not start SERVICE_UNKNOWN")
    set_health(channel, "watched.Service", "SERVING")
    check(next_status(updates) == SERVING, "Watch missed SERVING")
    set_health(channel, "watched.Service", "NOT_SERVING")
    check(next_status(updates) == NOT_SERVING, "Watch missed NOT_SERVING")
    call.cancel()



def health_drain(channel):
    """Drain (set_all_not_serving) reaches an open Watch and Check. Runs last: it freezes
    the server's health table."""
    stub = health_pb2_grpc.HealthStub(channel)
    whole = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
    check(next(whole).status == SERVING, "Watch('') did not start SERVING")
    set_health(channel, "", "DRAIN")
    check(next(whole).status == NOT_SERVING, "Watch('') missed NOT_SERVING on drain")
    whole.cancel()
    response = stub.Check(health_pb2.HealthCheckRequest(service="grpc.testing.TestService"),
                          timeout=TIMEOUT_S)
    check(response.status == NOT_SERVING, f"Check after drain = {response.status}")


def reflection_v1alpha(channel):
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    check(EXPECTED_SERVICES <= services, f"v1alpha list_services: {sorted(services)}")
    pool = descriptor_pool.DescriptorPool(db)
    log = pool.FindServiceByName("shardlog.v1.Log")
    check("Produce" in log.methods_by_name, f"shardlog.v1.Log methods {list(log.methods_by_name)}")
    test = pool.FindServiceByName("grpc.testing.TestService")
    unary = test.methods_by_name["UnaryCall"]
    check(unary.input_type.full_name == "grpc.testing.SimpleRequest", "UnaryCall input type")
    check(unary.output_type.fields_by_name["payload"].message_type.full_name
          == "grpc.testing.Payload", "transitive dependency messages.proto resolved")
    check(pool.FindFileByName("grpc/testing/empty.proto").name == "grpc/testing/empty.proto",
          "file_by_filename")
    try:
        pool.FindMessageTypeByName("no.such.Message")
        raise AssertionError("unknown symbol resolved")
    except KeyError:
        pass


def reflection_v1(channel):
    import reflection_v1_pb2 as pb
    import reflection_v1_pb2_grpc as pb_grpc
    stub = pb_grpc.ServerReflectionStub(channel)
    requests = [
        pb.ServerReflectionRequest(list_services=""),
        pb.ServerReflectionRequest(file_containing_symbol="grpc.testing.TestService"),
        pb.ServerReflectionRequest(file_containing_symbol="shardlog.v1.Log"),
        pb.ServerReflectionRequest(file_by_filename="grpc/testing/messages.proto"),
        pb.ServerReflectionRequest(file_containing_symbol="grpc.testing.TestService.UnaryCall"),
        pb.ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
        pb.ServerReflectionRequest(file_by_filename="no/such/file.proto"),
    ]
    responses = list(stub.ServerReflectionInfo(iter(requests), timeout=TIMEOUT_S))
    check(len(responses) == len(requests), f"{len(responses)} responses")
    services = {s.name for s in responses[0].list_services_response.service}
    check(EXPECTED_SERVICES <= services, f"v1 list_services {sorted(services)}")

    def files(response):
        names = []
        for raw in response.file_descriptor_response.file_descriptor_proto:
            names.append(descriptor_pb2.FileDescriptorProto.FromString(raw).name)
        return names

    test_files = files(responses[1])
    check(test_files[:1] == ["grpc/testing/test.proto"], f"TestService files {test_files}")
    check({"grpc/testing/empty.proto", "grpc/testing/messages.proto"} <= set(test_files),
          f"TestService transitive dependencies {test_files}")
    check(files(responses[2])[:1] == ["shardlog/v1/log.proto"], "shardlog.v1.Log file")
    check(files(responses[3])[:1] == ["grpc/testing/messages.proto"], "file_by_filename")
    check(files(responses[4])[:1] == ["grpc/testing/test.proto"], "method symbol")
    for response in responses[5:]:
        check(response.WhichOneof("message_response") == "error_response",
              f"unknown -> {response.WhichOneof('message_response')}")
        check(response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0],
              f"unknown -> code {response.error_response.error_code}")
    check(responses[1].original_request == requests[1], "original_request echoed")


CHECKS = [health_check, health_watch, reflection_v1alpha, reflection_v1, health_drain]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--proto-root", default=common.default_proto_root())
    args = parser.parse_args()
    common.generate_stubs(args.proto_root)
    failures = 0
    with grpc.insecure_channel(f"127.0.0.1:{args.port}") as channel:
        for check_fn in CHECKS:
            try:
                check_fn(channel)
                print(f"PASS {check_fn.__name__}")
            except Exception as err:  # noqa: BLE001 - every failure is reported per check
                failures += 1
                print(f"FAIL {check_fn.__name__}: {err!r}")
    sys.stdout.flush()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
