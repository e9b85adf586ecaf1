package query

import (
	"context"
	"fmt"
	"sync"
)

// GoFunc is a job function written in Go and compiled into the node binary,
// for speed. It follows the same model as a Starlark script.
type GoFunc struct {
	// Map is called for every entry that passes the job's filter. key and
	// value are only valid during the call. emit's value must be JSON-able
	// (integers become int64, floats float64; other types go through
	// encoding/json). ctx is cancelled when the task hits a limit.
	Map func(ctx context.Context, key, value []byte, args []byte, emit func(key string, value any) error) error
	// Combine (optional) folds some values of one key into one, locally and
	// while merging; it may be applied several times, to its own output.
	Combine func(key string, values []any) (any, error)
	// Reduce (optional) turns all values of a key into the result.
	Reduce func(key string, values []any) (any, error)
}

// Registry holds the Go functions a node offers to jobs. The node owns one
// (there is no package-level registry); it is safe for concurrent use.
type Registry struct {
	mu    sync.RWMutex
	funcs map[string]GoFunc
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{funcs: map[string]GoFunc{}} }

// Register adds a function under name, like database/sql drivers register.
func (r *Registry) Register(name string, f GoFunc) error {
	if name == "" {
		return fmt.Errorf("%w: empty name", ErrRegister)
	}
	if f.Map == nil {
		return fmt.Errorf("%w: %q has no Map", ErrRegister, name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.funcs[name]; dup {
		return fmt.Errorf("%w: %q is already registered", ErrRegister, name)
	}
	r.funcs[name] = f
	return nil
}

func (r *Registry) lookup(name string) (GoFunc, bool) {
	if r == nil {
		return GoFunc{}, false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	f, ok := r.funcs[name]
	return f, ok
}
