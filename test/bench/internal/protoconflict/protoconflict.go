// Package protoconflict lets zerogrid's and etcd's generated protobuf code
// live in one program. Both register a file named plainly "kv.proto" in the
// global protobuf registry (zerogrid's grid/gridpb is generated without a
// path-qualified name), and the protobuf runtime panics at start-up on the
// second registration unless GOLANG_PROTOBUF_REGISTRATION_CONFLICT says
// otherwise. The message types themselves do not clash (zerogrid.* and
// mvccpb.*), and nothing here looks files up by name, so a warning is enough.
//
// The variable must be set before etcd's mvccpb package initialises. Go
// initialises, at each step, the first package by import path whose imports
// are done; this package imports only os, and its path sorts before
// go.etcd.io/..., so it runs first. The runtime reads the variable when the
// conflict happens, not before. Remove this package once gridpb's files are
// registered under a unique path (e.g. generated from the repository root,
// as grid/gridpb/kv.proto).
package protoconflict

import "os"

const env = "GOLANG_PROTOBUF_REGISTRATION_CONFLICT"

func init() {
	if os.Getenv(env) == "" {
		os.Setenv(env, "warn")
	}
}
