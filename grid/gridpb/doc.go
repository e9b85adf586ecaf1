// Package gridpb holds zerogrid's wire types and gRPC services (generated from
// the .proto files here; the generated code is committed) and the one table
// that maps grid errors to gRPC status codes and back.
package gridpb
