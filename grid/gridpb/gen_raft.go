package gridpb

//go:generate protoc -I ../.. --go_out=../.. --go_opt=module=github.com/zerogrid/zerogrid --go-grpc_out=../.. --go-grpc_opt=module=github.com/zerogrid/zerogrid grid/gridpb/raft.proto
