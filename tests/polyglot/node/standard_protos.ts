// Descriptors of the two standard gRPC protos the Node client needs but that the platform does
// not generate TypeScript for: grpc.health.v1 (health checks) and google.rpc.ErrorInfo (the
// detail every platform error carries). They are built from FileDescriptorProto messages,
// field by field as in the upstream .proto files, so Connect can call and decode them without
// a codegen step. Only what the client uses is declared.

import { create, createFileRegistry } from "@bufbuild/protobuf";
import type { DescMessage, DescMethodUnary, DescService } from "@bufbuild/protobuf";
import {
  FieldDescriptorProto_Label as Label,
  FieldDescriptorProto_Type as Type,
  FileDescriptorProtoSchema,
} from "@bufbuild/protobuf/wkt";

const healthFile = create(FileDescriptorProtoSchema, {
  name: "grpc/health/v1/health.proto",
  package: "grpc.health.v1",
  syntax: "proto3",
  messageType: [
    {
      name: "HealthCheckRequest",
      field: [{ name: "service", jsonName: "service", number: 1, label: Label.OPTIONAL, type: Type.STRING }],
    },
    {
      name: "HealthCheckResponse",
      field: [
        {
          name: "status",
          jsonName: "status",
          number: 1,
          label: Label.OPTIONAL,
          type: Type.ENUM,
          typeName: ".grpc.health.v1.HealthCheckResponse.ServingStatus",
        },
      ],
      enumType: [
        {
          name: "ServingStatus",
          value: [
            { name: "UNKNOWN", number: 0 },
            { name: "SERVING", number: 1 },
            { name: "NOT_SERVING", number: 2 },
            { name: "SERVICE_UNKNOWN", number: 3 },
          ],
        },
      ],
    },
  ],
  service: [
    {
      name: "Health",
      method: [
        {
          name: "Check",
          inputType: ".grpc.health.v1.HealthCheckRequest",
          outputType: ".grpc.health.v1.HealthCheckResponse",
        },
      ],
    },
  ],
});

const errorDetailsFile = create(FileDescriptorProtoSchema, {
  name: "google/rpc/error_details.proto",
  package: "google.rpc",
  syntax: "proto3",
  messageType: [
    {
      name: "ErrorInfo",
      field: [
        { name: "reason", jsonName: "reason", number: 1, label: Label.OPTIONAL, type: Type.STRING },
        { name: "domain", jsonName: "domain", number: 2, label: Label.OPTIONAL, type: Type.STRING },
        {
          name: "metadata",
          jsonName: "metadata",
          number: 3,
          label: Label.REPEATED,
          type: Type.MESSAGE,
          typeName: ".google.rpc.ErrorInfo.MetadataEntry",
        },
      ],
      nestedType: [
        {
          name: "MetadataEntry",
          options: { mapEntry: true },
          field: [
            { name: "key", jsonName: "key", number: 1, label: Label.OPTIONAL, type: Type.STRING },
            { name: "value", jsonName: "value", number: 2, label: Label.OPTIONAL, type: Type.STRING },
          ],
        },
      ],
    },
  ],
});

const registry = createFileRegistry(
  createFileRegistry(healthFile, () => undefined),
  createFileRegistry(errorDetailsFile, () => undefined),
);

/** A service whose one method, `check`, is unary: what `createClient` needs to type the call. */
export type HealthService = DescService & {
  readonly method: { readonly check: DescMethodUnary };
};

function healthService(): HealthService {
  const service = registry.getService("grpc.health.v1.Health");
  if (service?.method.check?.methodKind !== "unary") {
    throw new Error("grpc.health.v1.Health has no unary Check");
  }
  return service as HealthService;
}

function message(typeName: string): DescMessage {
  const desc = registry.getMessage(typeName);
  if (desc === undefined) {
    throw new Error(`no message ${typeName}`);
  }
  return desc;
}

/** grpc.health.v1.Health, whose Check takes HealthCheckRequest{service} and answers
 * HealthCheckResponse{status}. */
export const Health = healthService();

/** google.rpc.ErrorInfo: reason, domain, metadata map. */
export const ErrorInfoSchema = message("google.rpc.ErrorInfo");
