package query

import (
	"context"
	"fmt"

	"go.starlark.net/starlark"
)

// Processor is an entry processor: a Starlark function run on one key at
// the partition leader, whose result the node commits as a conditional
// write. It is safe for concurrent Apply calls.
type Processor struct {
	fn  starlark.Callable
	lim Limits
}

// CompileProcessor compiles src, which must define process(key, value,
// args): key is a string, value the decoded current value (None when the
// key is absent; a value that is not JSON is a string), args the decoded
// JSON arguments (None when empty). process returns the new value (a
// string is stored as is, anything else JSON-encoded) or None to delete.
func CompileProcessor(src string, limits Limits) (*Processor, error) {
	if errs := limits.validate(); len(errs) > 0 {
		return nil, errs[0]
	}
	lim := limits.withDefaults()
	f, err := dialect().Parse("processor", src, 0)
	if err != nil {
		return nil, compileErr(err)
	}
	defs := topLevelDefs(f)
	n, ok := defs["process"]
	if !ok {
		return nil, fmt.Errorf("%w: the processor must define process(key, value, args)", ErrBadJob)
	}
	if n >= 0 && n != 3 {
		return nil, fmt.Errorf("%w: process must take 3 parameters (key, value, args), has %d", ErrBadJob, n)
	}
	prog, err := starlark.FileProgram(f, isExprPredeclared)
	if err != nil {
		return nil, compileErr(err)
	}
	g, err := initProgram(prog, predeclared(starlark.None), lim)
	if err != nil {
		return nil, err
	}
	fn, ok := g["process"].(starlark.Callable)
	if !ok {
		return nil, fmt.Errorf("%w: process is a %s, not a function", ErrBadJob, g["process"].Type())
	}
	return &Processor{fn: fn, lim: lim}, nil
}

// Apply runs process on one key's current value (exists reports whether
// the key is present). It returns the value to store, or del when process
// returned None. Limits apply as for a task; a result larger than
// Limits.OutputBytes is ErrOutputCap.
func (p *Processor) Apply(ctx context.Context, key []byte, value []byte, exists bool, args []byte) (newValue []byte, del bool, err error) {
	a := starlark.Value(starlark.None)
	if len(args) > 0 {
		v, ok := parseJSON(args)
		if !ok {
			return nil, false, fmt.Errorf("%w: processor args are not valid JSON", ErrBadJob)
		}
		a = v
	}
	v := starlark.Value(starlark.None)
	if exists {
		v = decodeStored(value)
	}
	r := newRun(ctx, p.lim, "processor")
	defer r.close()
	res, err := r.call(p.fn, starlark.String(key), v, a)
	if err != nil {
		return nil, false, err
	}
	switch res := res.(type) {
	case starlark.NoneType:
		return nil, true, nil
	case starlark.String:
		newValue = []byte(res)
	case starlark.Bytes:
		newValue = []byte(res)
	default:
		if newValue, err = appendStarlarkJSON(nil, res, 0); err != nil {
			return nil, false, fmt.Errorf("%w: process returned a value that is not JSON-able: %v", ErrScript, err)
		}
	}
	if len(newValue) > p.lim.OutputBytes {
		return nil, false, fmt.Errorf("%w: the new value is %d bytes, limit %d", ErrOutputCap, len(newValue), p.lim.OutputBytes)
	}
	return newValue, false, nil
}
