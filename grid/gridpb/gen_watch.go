package gridpb

// watch.proto has its own line (as raft.proto does) so that services added
// in parallel do not all edit the same line of gen.go.
//go:generate protoc -I ../.. --go_out=../.. --go_opt=module=github.com/zerogrid/zerogrid --go-grpc_out=../.. --go-grpc_opt=module=github.com/zerogrid/zerogrid grid/gridpb/watch.proto
