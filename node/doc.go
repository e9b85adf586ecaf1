// Package node is the zerogrid daemon: it wires a storage engine, the
// multi-Raft host, the shared gRPC server (Raft transport, KV and Admin
// services), the optional Redis front door (Config.RESPListen, resp.go) and
// the background loops of one node. cmd/zerogrid parses flags
// into a Config and calls Start; tests and embedding programs do the same
// in-process (several nodes can run in one process: nothing is global).
package node
