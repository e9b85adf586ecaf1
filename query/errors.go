package query

import "errors"

// Sentinel errors. Every error returned by this package wraps one of them
// (with %w), so callers test with errors.Is and never compare strings.
var (
	// ErrSyntax: a filter, aggregate expression, script or processor does
	// not parse. The message carries file:line:col.
	ErrSyntax = errors.New("query: syntax error")
	// ErrUnknownAggregate: Agg names no built-in aggregate.
	ErrUnknownAggregate = errors.New("query: unknown aggregate")
	// ErrUnknownFunction: Func names no registered Go function, or Starlark
	// code refers to a name that is not defined (resolved at compile time).
	ErrUnknownFunction = errors.New("query: unknown function")
	// ErrBadJob: the job is malformed in some other way (no or several work
	// kinds, bad K, bad map name, bad Args JSON, negative limits, a script
	// without map, a partial of the wrong kind...).
	ErrBadJob = errors.New("query: bad job")
	// ErrStepBudget: Starlark code ran more than Limits.Steps steps.
	ErrStepBudget = errors.New("query: step budget exceeded (Limits.Steps)")
	// ErrDeadline: a task ran longer than Limits.Deadline.
	ErrDeadline = errors.New("query: deadline exceeded (Limits.Deadline)")
	// ErrOutputCap: a task's partial result grew beyond Limits.OutputBytes.
	ErrOutputCap = errors.New("query: output cap exceeded (Limits.OutputBytes)")
	// ErrMemoryCap: the heap grew more than Limits.MemoryBytes while a task ran.
	ErrMemoryCap = errors.New("query: memory cap exceeded (Limits.MemoryBytes)")
	// ErrScript: user code failed at run time (wrong types, fail(), a value
	// that is not JSON-able, an int beyond 64 bits...). The message carries
	// the Starlark backtrace.
	ErrScript = errors.New("query: script error")
	// ErrBadPartial: UnmarshalPartial was given bytes that are not a
	// partial, or Merge/Finalize a partial of another job.
	ErrBadPartial = errors.New("query: malformed partial")
	// ErrRegister: Registry.Register was given an empty or duplicate name,
	// or no Map.
	ErrRegister = errors.New("query: cannot register function")
)
