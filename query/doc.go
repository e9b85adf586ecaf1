// Package query is the compute engine that runs shipped work over one
// partition's data: the job model, built-in aggregates, filter
// expressions, Starlark scripts and registered Go functions under limits,
// partial results and their wire encoding, and entry processors. It is pure
// computation: it never touches a disk or a socket, and it holds no
// package-level state. The node wires it to storage and gRPC; the
// coordinator plans, retries and merges.
//
// A job's life:
//
//	prog, err := query.Compile(job, registry) // once per task or job; validates everything
//	part, stats, err := prog.RunTask(ctx, scan) // on a replica, over one partition
//	b, _ := part.MarshalBinary()                // shipped to the coordinator
//	p, err := query.UnmarshalPartial(b)         // strict: malformed bytes are an error
//	err = prog.Merge(merged, p)                 // associative and commutative
//	res, err := prog.Finalize(ctx, merged)      // reduce, avg division, topk order
//
// Filters and aggregate expressions are Starlark expressions over k (the
// key) and v (the value decoded from JSON; objects answer v.field and
// v["field"]). They are compiled once per Program; simple shapes (field
// paths, literals, comparisons, and/or/not) are evaluated in Go straight
// off the stored bytes, and objects are decoded lazily, field by field.
//
// Integers are exact 64-bit on every architecture: Starlark ints are
// arbitrary precision, and any int leaving Starlark must fit in int64. Sums
// are exact (floats are added as exact multiples of 2^-1074 and rounded
// once), so results do not depend on partitioning, merge order, retries or
// hedges.
//
// User code runs sandboxed: the Starlark core plus emit, args, json and
// math, with no I/O; a step budget, a deadline, a cap on output bytes and a
// cap on heap growth (a watchdog goroutine per run) stop runaway code with
// an error naming the limit. Errors wrap the sentinels in errors.go.
//
// query may import grid and the standard library, never node, client,
// replication or cmd.
package query
