package query

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	starlarkjson "go.starlark.net/lib/json"
	starlarkmath "go.starlark.net/lib/math"
	"go.starlark.net/resolve"
	"go.starlark.net/starlark"
	"go.starlark.net/syntax"
)

// dialect is the Starlark accepted everywhere. while and recursion are
// allowed because the step budget bounds them.
func dialect() *syntax.FileOptions {
	return &syntax.FileOptions{Set: true, While: true, TopLevelControl: true, Recursion: true}
}

// memTick is how often a run samples heap growth. A runaway allocation is
// noticed within a tick or two (plus scheduling delay on a busy core).
const memTick = 2 * time.Millisecond

// predeclared returns the names user code sees besides the Starlark core:
// args (the job's Args, decoded and frozen), json and math. No I/O.
func predeclared(args starlark.Value) starlark.StringDict {
	return starlark.StringDict{"args": args, "json": starlarkjson.Module, "math": starlarkmath.Module}
}

func isExprPredeclared(name string) bool {
	return name == "args" || name == "json" || name == "math"
}

func isScriptPredeclared(name string) bool { return name == "emit" || isExprPredeclared(name) }

// failure boxes the error that stopped a run.
type failure struct{ err error }

// run is one guarded execution of user code: a Starlark thread with the step
// budget, plus a watchdog goroutine that enforces the deadline and the
// memory cap and relays cancellation of the caller's context. The first
// failure wins; it cancels the thread (and run.ctx, which Go functions and
// the scan loop watch). close stops and waits for the watchdog.
type run struct {
	lim    Limits
	th     *starlark.Thread
	ctx    context.Context
	cancel context.CancelCauseFunc
	cause  atomic.Pointer[failure]

	stop chan struct{}
	wg   sync.WaitGroup

	samples []metrics.Sample
	memBase uint64 // heap object bytes when the run started
	memNext uint64 // heap object bytes above which to look closer
}

func newRun(parent context.Context, lim Limits, name string) *run {
	ctx, cancel := context.WithCancelCause(parent)
	r := &run{
		lim:    lim,
		ctx:    ctx,
		cancel: cancel,
		stop:   make(chan struct{}),
		samples: []metrics.Sample{
			{Name: "/memory/classes/heap/objects:bytes"},
			{Name: "/gc/heap/live:bytes"},
		},
	}
	r.th = &starlark.Thread{
		Name:       name,
		Print:      func(*starlark.Thread, string) {}, // no I/O
		OnMaxSteps: func(*starlark.Thread) { r.fail(fmt.Errorf("%w: more than %d steps", ErrStepBudget, lim.Steps)) },
	}
	r.th.SetMaxExecutionSteps(lim.Steps)
	metrics.Read(r.samples)
	r.memBase = r.samples[0].Value.Uint64()
	r.memNext = satAdd(r.memBase, lim.MemoryBytes)
	r.wg.Add(1)
	go r.watch(parent)
	return r
}

func (r *run) watch(parent context.Context) {
	defer r.wg.Done()
	deadline := time.NewTimer(r.lim.Deadline)
	defer deadline.Stop()
	tick := time.NewTicker(memTick)
	defer tick.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-parent.Done():
			r.fail(parent.Err())
			return
		case <-deadline.C:
			r.fail(fmt.Errorf("%w: ran longer than %v", ErrDeadline, r.lim.Deadline))
			return
		case <-tick.C:
			if grew, over := r.heapGrowth(); over {
				r.fail(fmt.Errorf("%w: the heap grew by %.1f MiB, limit %.1f MiB", ErrMemoryCap, float64(grew)/(1<<20), float64(r.lim.MemoryBytes)/(1<<20)))
				return
			}
		}
	}
}

// heapGrowth samples the heap. Heap object bytes include garbage, so when
// they pass the cap it collects and judges the live heap instead. The
// measure is process-wide: concurrent tasks share it.
func (r *run) heapGrowth() (grew uint64, over bool) {
	metrics.Read(r.samples[:1])
	if r.samples[0].Value.Uint64() <= r.memNext {
		return 0, false
	}
	runtime.GC()
	metrics.Read(r.samples)
	live := r.samples[1].Value.Uint64()
	if live > satAdd(r.memBase, r.lim.MemoryBytes) {
		return live - r.memBase, true
	}
	r.memNext = max(satAdd(r.memBase, r.lim.MemoryBytes), satAdd(live, r.lim.MemoryBytes/2))
	return 0, false
}

func satAdd(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// fail records the first reason to stop and stops the thread.
func (r *run) fail(err error) {
	if r.cause.CompareAndSwap(nil, &failure{err}) {
		r.th.Cancel(err.Error())
		r.cancel(err)
	}
}

// failed is the error that stopped the run, or nil.
func (r *run) failed() error {
	if f := r.cause.Load(); f != nil {
		return f.err
	}
	return nil
}

func (r *run) close() {
	close(r.stop)
	r.wg.Wait()
	r.cancel(nil)
}

// call runs a Starlark callable on the run's thread.
func (r *run) call(fn starlark.Value, args ...starlark.Value) (starlark.Value, error) {
	if err := r.failed(); err != nil {
		return nil, err
	}
	v, err := starlark.Call(r.th, fn, args, nil)
	if err != nil {
		return nil, r.wrap(err)
	}
	return v, nil
}

// wrap classifies an error from user code: the limit that stopped the run
// (with where it stopped), or ErrScript with the Starlark backtrace.
func (r *run) wrap(err error) error {
	var ee *starlark.EvalError
	isEval := errors.As(err, &ee)
	if cause := r.failed(); cause != nil {
		if isEval {
			if pos, ok := userPos(ee.CallStack); ok {
				return fmt.Errorf("%w (stopped at %s)", cause, pos)
			}
		}
		return cause
	}
	if isEval {
		// An error of ours that passed through Starlark (e.g. from a
		// combine run inside emit) already says what happened.
		if c := ee.Unwrap(); c != nil && isQueryErr(c) {
			return c
		}
		return fmt.Errorf("%w: %s", ErrScript, ee.Backtrace())
	}
	if isQueryErr(err) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrScript, err)
}

// userPos is the innermost position in user code (not in a built-in).
func userPos(stack starlark.CallStack) (syntax.Position, bool) {
	for i := len(stack) - 1; i >= 0; i-- {
		if p := stack[i].Pos; p.IsValid() && p.Filename() != "<builtin>" {
			return p, true
		}
	}
	return syntax.Position{}, false
}

func isQueryErr(err error) bool {
	for _, s := range []error{ErrSyntax, ErrUnknownAggregate, ErrUnknownFunction, ErrBadJob, ErrStepBudget,
		ErrDeadline, ErrOutputCap, ErrMemoryCap, ErrScript} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// compileErr classifies a parse or resolve error. Starlark resolves names
// at compile time; an undefined name is ErrUnknownFunction.
func compileErr(err error) error {
	var se syntax.Error
	if errors.As(err, &se) {
		return fmt.Errorf("%w: %s", ErrSyntax, se.Error())
	}
	var el resolve.ErrorList
	if errors.As(err, &el) {
		errs := make([]error, 0, len(el))
		for _, e := range el {
			if strings.HasPrefix(e.Msg, "undefined: ") {
				errs = append(errs, fmt.Errorf("%w: %s", ErrUnknownFunction, e.Error()))
			} else {
				errs = append(errs, fmt.Errorf("%w: %s", ErrSyntax, e.Error()))
			}
		}
		return errors.Join(errs...)
	}
	return fmt.Errorf("%w: %v", ErrSyntax, err)
}

// exprProgram compiles expr as the body of `def name(k, v): return expr`,
// so it is parsed and resolved once and then called per record. Positions
// in errors stay those of the user's text.
func exprProgram(name string, expr syntax.Expr) (*starlark.Program, error) {
	pos := syntax.Start(expr)
	def := &syntax.DefStmt{
		Def:    pos,
		Name:   &syntax.Ident{NamePos: pos, Name: name},
		Lparen: pos,
		Params: []syntax.Expr{&syntax.Ident{NamePos: pos, Name: "k"}, &syntax.Ident{NamePos: pos, Name: "v"}},
		Rparen: pos,
		Body:   []syntax.Stmt{&syntax.ReturnStmt{Return: pos, Result: expr}},
	}
	f := &syntax.File{Path: pos.Filename(), Stmts: []syntax.Stmt{def}, Options: dialect()}
	prog, err := starlark.FileProgram(f, isExprPredeclared)
	if err != nil {
		return nil, compileErr(err)
	}
	return prog, nil
}

// initProgram executes a program's top level under the limits and returns
// its frozen globals.
func initProgram(prog *starlark.Program, env starlark.StringDict, lim Limits) (starlark.StringDict, error) {
	r := newRun(context.Background(), lim, "init")
	defer r.close()
	g, err := prog.Init(r.th, env)
	if err != nil {
		return nil, r.wrap(err)
	}
	g.Freeze()
	return g, nil
}

// topLevelDefs finds top-level bindings in a script: def statements (with
// their parameter count) and plain assignments (count -1).
func topLevelDefs(f *syntax.File) map[string]int {
	defs := map[string]int{}
	for _, st := range f.Stmts {
		switch st := st.(type) {
		case *syntax.DefStmt:
			defs[st.Name.Name] = len(st.Params)
		case *syntax.AssignStmt:
			if id, ok := st.LHS.(*syntax.Ident); ok {
				defs[id.Name] = -1
			}
		}
	}
	return defs
}
