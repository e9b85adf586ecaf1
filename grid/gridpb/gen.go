package gridpb

// Regenerate with `go generate ./grid/gridpb` (needs protoc from Debian's
// protobuf-compiler, and protoc-gen-go / protoc-gen-go-grpc from `go install`;
// .ci/run installs all three).
//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative kv.proto command.proto compute.proto
