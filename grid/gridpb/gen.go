package gridpb

// Regenerate with `go generate ./grid/gridpb`. The committed code was made
// with protoc 3.21.12 (Debian's protobuf-compiler) and
//
//	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
//
// (raft.proto has its own line in gen_raft.go).
//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative kv.proto command.proto compute.proto
