package gridpb

// Regenerate with `go generate ./grid/gridpb`. The committed code was made
// with protoc 3.21.12 (Debian's protobuf-compiler) and
//
//	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
//
// (raft.proto has its own line in gen_raft.go). Files are compiled from the
// module root so they register as "grid/gridpb/kv.proto" and so on: bare
// names such as "kv.proto" collide with other projects' protos (etcd's
// mvccpb registers "kv.proto") and make a program linking both panic.
//go:generate protoc -I ../.. --go_out=../.. --go_opt=module=github.com/zerogrid/zerogrid --go-grpc_out=../.. --go-grpc_opt=module=github.com/zerogrid/zerogrid grid/gridpb/kv.proto grid/gridpb/command.proto grid/gridpb/compute.proto grid/gridpb/cluster.proto grid/gridpb/lock.proto grid/gridpb/backup.proto grid/gridpb/integrity.proto
