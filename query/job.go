package query

import (
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"go.starlark.net/starlark"
	"go.starlark.net/syntax"

	"github.com/zerogrid/zerogrid/grid"
)

// Job is what a user submits (the wire form mirrors it). Exactly one of
// Agg, Script and Func says what to compute.
type Job struct {
	Map    string
	Prefix []byte
	// Filter is a Starlark expression over k (the key, a string) and v (the
	// value decoded from JSON; objects answer both v.region and
	// v["region"]; a value that is not JSON is a string). Empty keeps all.
	Filter string
	// Agg is a built-in aggregate: "count", "sum(EXPR)", "min(EXPR)",
	// "max(EXPR)", "avg(EXPR)", "distinct(EXPR)" (exact distinct count) or
	// "topk(K, EXPR)" (the K entries with the largest EXPR, as key and
	// value), each optionally followed by " by EXPR". EXPRs are Starlark
	// expressions over k and v; a None value is skipped.
	Agg string
	// Script is a Starlark program defining map(k, v), which calls
	// emit(key, value) (key a string or int, value JSON-able), and
	// optionally combine(key, values) -> value (run locally, possibly
	// several times, so it must be associative and commutative and accept
	// its own output) and reduce(key, values) -> value (run at the end).
	Script string
	// Func names a Go function registered in the node's Registry.
	Func string
	// Args is JSON handed to scripts and expressions as `args` and to Go
	// functions as bytes. May be empty.
	Args   string
	Limits Limits
}

// Limits bound one task (and the compile, merge and finalize steps that
// run user code). A zero field means its default.
type Limits struct {
	Steps       uint64        // Starlark execution steps per task
	Deadline    time.Duration // wall clock per task
	OutputBytes int           // cap on a task's partial result (estimated encoded size)
	MemoryBytes uint64        // cap on heap growth while a task runs
}

// DefaultLimits are the limits a job gets unless it asks otherwise.
func DefaultLimits() Limits {
	return Limits{Steps: 50_000_000, Deadline: 60 * time.Second, OutputBytes: 16 << 20, MemoryBytes: 64 << 20}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.Steps == 0 {
		l.Steps = d.Steps
	}
	if l.Deadline <= 0 {
		l.Deadline = d.Deadline
	}
	if l.OutputBytes <= 0 {
		l.OutputBytes = d.OutputBytes
	}
	if l.MemoryBytes == 0 {
		l.MemoryBytes = d.MemoryBytes
	}
	return l
}

func (l Limits) validate() []error {
	var errs []error
	if l.Deadline < 0 {
		errs = append(errs, fmt.Errorf("%w: Limits.Deadline %v is negative", ErrBadJob, l.Deadline))
	}
	if l.OutputBytes < 0 {
		errs = append(errs, fmt.Errorf("%w: Limits.OutputBytes %d is negative", ErrBadJob, l.OutputBytes))
	}
	return errs
}

// maxTopK bounds K in topk(K, EXPR).
const maxTopK = 10_000

// Validate reports every problem with the job at once: syntax errors (with
// line:col), undefined names, an unknown aggregate, no or several work
// kinds, a bad K, a bad map name, Args that are not JSON, negative limits.
// It does not check that Func is registered (Compile does).
func (j *Job) Validate() error {
	_, err := compileJob(*j, nil, false)
	return err
}

// aggSpec is a parsed Agg.
type aggSpec struct {
	kind kind
	text string      // the aggregate without its by clause, for messages
	k    int         // topk's K
	arg  syntax.Expr // nil for count
	by   syntax.Expr // nil without a by clause
}

func aggKind(name string) (kind, bool) {
	for k := kindCount; k < kindValues; k++ {
		if k.String() == name {
			return k, true
		}
	}
	return 0, false
}

// parseAgg parses "NAME(ARGS) by EXPR". "by" is not a Starlark keyword, so
// the by clause is found by trying each standalone "by" where both sides
// parse on their own, then parsing the whole text with that "by" replaced
// by ", " (same length, so positions in errors stay right).
func parseAgg(text string) (*aggSpec, []error) {
	head, by, byAt, err := splitBy(text)
	if err != nil {
		return nil, []error{err}
	}
	spec := &aggSpec{by: by, text: strings.TrimSpace(text)}
	if byAt >= 0 {
		spec.text = strings.TrimSpace(text[:byAt])
	}
	start := syntax.Start(head)
	var name string
	var args []syntax.Expr
	switch h := head.(type) {
	case *syntax.Ident:
		name = h.Name
	case *syntax.CallExpr:
		id, ok := h.Fn.(*syntax.Ident)
		if !ok {
			return nil, []error{fmt.Errorf("%w: %q: want count or NAME(EXPR) [by EXPR]", ErrUnknownAggregate, text)}
		}
		name, args = id.Name, h.Args
		if len(args) == 0 && name != "count" {
			return nil, []error{fmt.Errorf("%w: %s: %s needs an expression", ErrBadJob, start, name)}
		}
	default:
		return nil, []error{fmt.Errorf("%w: %q: want count or NAME(EXPR) [by EXPR]", ErrUnknownAggregate, text)}
	}
	k, ok := aggKind(name)
	if !ok {
		return nil, []error{fmt.Errorf("%w: %s: %q (want count, sum, min, max, avg, distinct or topk)", ErrUnknownAggregate, start, name)}
	}
	spec.kind = k
	for _, a := range args {
		if b, ok := a.(*syntax.BinaryExpr); ok && b.Op == syntax.EQ {
			return nil, []error{fmt.Errorf("%w: %s: %s takes no keyword arguments", ErrBadJob, start, name)}
		}
		if u, ok := a.(*syntax.UnaryExpr); ok && (u.Op == syntax.STAR || u.Op == syntax.STARSTAR) {
			return nil, []error{fmt.Errorf("%w: %s: %s takes no *args", ErrBadJob, start, name)}
		}
	}
	want := 1
	switch k {
	case kindCount:
		want = 0
	case kindTopK:
		want = 2
	}
	if len(args) != want {
		form := map[kind]string{kindCount: "count", kindTopK: "topk(K, EXPR)"}[k]
		if form == "" {
			form = name + "(EXPR)"
		}
		return nil, []error{fmt.Errorf("%w: %s: %s takes %d argument(s), got %d (want %s)", ErrBadJob, start, name, want, len(args), form)}
	}
	switch k {
	case kindCount:
	case kindTopK:
		lit, ok := args[0].(*syntax.Literal)
		n, isInt := int64(0), false
		if ok && lit.Token == syntax.INT {
			switch v := lit.Value.(type) {
			case int64:
				n, isInt = v, true
			case *big.Int:
				n, isInt = maxTopK+1, true
			}
		}
		if !isInt || n < 1 || n > maxTopK {
			return nil, []error{fmt.Errorf("%w: %s: topk's K must be an integer literal in 1..%d", ErrBadJob, syntax.Start(args[0]), maxTopK)}
		}
		spec.k = int(n)
		spec.arg = args[1]
	default:
		spec.arg = args[0]
	}
	return spec, nil
}

// splitBy returns the aggregate, the by expression (nil if none) and the
// offset of "by" (-1 if none).
func splitBy(text string) (head, by syntax.Expr, byAt int, err error) {
	var byErr error
	for _, i := range byCandidates(text) {
		if strings.TrimSpace(text[:i]) == "" {
			continue
		}
		if _, err := dialect().ParseExpr("agg", text[:i], 0); err != nil {
			continue // this "by" is inside the aggregate (e.g. in a string)
		}
		joined := text[:i] + ", " + text[i+2:]
		e, err := dialect().ParseExpr("agg", joined, 0)
		if err != nil {
			if byErr == nil {
				byErr = err // most likely a mistake in the by expression
			}
			continue
		}
		if _, err := dialect().ParseExpr("agg", trimLeft(text[i+2:]), 0); err != nil {
			continue
		}
		t, ok := e.(*syntax.TupleExpr)
		if !ok || len(t.List) < 2 {
			continue
		}
		if rest := t.List[1:]; len(rest) == 1 {
			by = rest[0]
		} else {
			by = &syntax.TupleExpr{List: rest}
		}
		return t.List[0], by, i, nil
	}
	e, err := dialect().ParseExpr("agg", text, 0)
	if err != nil {
		if byErr != nil {
			err = byErr
		}
		return nil, nil, -1, compileErr(err)
	}
	if _, isTuple := e.(*syntax.TupleExpr); isTuple {
		return nil, nil, -1, fmt.Errorf("%w: %q: want one aggregate", ErrUnknownAggregate, text)
	}
	return e, nil, -1, nil
}

// byCandidates lists the offsets of "by" standing alone as a word.
func byCandidates(s string) []int {
	var out []int
	for i := 0; i+2 <= len(s); i++ {
		if s[i] != 'b' || s[i+1] != 'y' {
			continue
		}
		if i > 0 && (isIdentByte(s[i-1]) || s[i-1] == '.') {
			continue
		}
		if i+2 < len(s) && isIdentByte(s[i+2]) {
			continue
		}
		out = append(out, i)
	}
	return out
}

func isIdentByte(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80
}

// trimLeft drops leading blanks, which Starlark's scanner would take for
// indentation.
func trimLeft(s string) string { return strings.TrimLeft(s, " \t\r\n") }

// usesName reports whether an expression mentions an identifier.
func usesName(e syntax.Node, name string) bool {
	found := false
	syntax.Walk(e, func(n syntax.Node) bool {
		if id, ok := n.(*syntax.Ident); ok && id.Name == name {
			found = true
		}
		return !found
	})
	return found
}

// compileJob checks the job, reporting every problem, and when build is
// set also builds the Program (running the script's top level).
func compileJob(j Job, reg *Registry, build bool) (*Program, error) {
	var errs []error
	if err := grid.ValidateMapName(j.Map); err != nil {
		errs = append(errs, fmt.Errorf("%w: %w", ErrBadJob, err))
	}
	errs = append(errs, j.Limits.validate()...)
	var set []string
	for _, w := range []struct{ name, val string }{{"Agg", j.Agg}, {"Script", j.Script}, {"Func", j.Func}} {
		if strings.TrimSpace(w.val) != "" {
			set = append(set, w.name)
		}
	}
	switch len(set) {
	case 0:
		errs = append(errs, fmt.Errorf("%w: set one of Agg, Script or Func", ErrBadJob))
	case 1:
	default:
		errs = append(errs, fmt.Errorf("%w: set only one of Agg, Script or Func, got %s", ErrBadJob, strings.Join(set, " and ")))
	}
	args := starlark.Value(starlark.None)
	if strings.TrimSpace(j.Args) != "" {
		v, ok := parseJSON([]byte(j.Args))
		if !ok {
			errs = append(errs, fmt.Errorf("%w: Args is not valid JSON", ErrBadJob))
		} else {
			v.Freeze()
			args = v
		}
	}

	p := &Program{job: j, lim: j.Limits.withDefaults(), args: args}
	var filterProg, aggProg, byProg, scriptProg *starlark.Program
	if strings.TrimSpace(j.Filter) != "" {
		e, err := dialect().ParseExpr("filter", trimLeft(j.Filter), 0)
		if err != nil {
			errs = append(errs, compileErr(err))
		} else {
			p.needV = p.needV || usesName(e, "v")
			p.fastFilter = compileFast(e)
			if filterProg, err = exprProgram("filter", e); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(set) == 1 && set[0] == "Agg" {
		spec, aerrs := parseAgg(trimLeft(j.Agg))
		errs = append(errs, aerrs...)
		if spec != nil {
			p.kind, p.k, p.aggText, p.hasBy = spec.kind, spec.k, spec.text, spec.by != nil
			if spec.arg != nil {
				p.needV = p.needV || usesName(spec.arg, "v")
				if f := compileFast(spec.arg); f != nil && f.isLeaf() {
					p.fastAgg = f
				}
				var err error
				if aggProg, err = exprProgram("agg", spec.arg); err != nil {
					errs = append(errs, err)
				}
			}
			if spec.by != nil {
				p.needV = p.needV || usesName(spec.by, "v")
				if f := compileFast(spec.by); f != nil && f.isLeaf() {
					p.fastBy = f
				}
				var err error
				if byProg, err = exprProgram("by", spec.by); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	if len(set) == 1 && set[0] == "Script" {
		p.kind, p.needV = kindValues, true
		f, err := dialect().Parse("script", j.Script, 0)
		if err != nil {
			errs = append(errs, compileErr(err))
		} else {
			defs := topLevelDefs(f)
			if _, ok := defs["map"]; !ok {
				errs = append(errs, fmt.Errorf("%w: the script must define map(k, v)", ErrBadJob))
			}
			for name, want := range map[string]int{"map": 2, "combine": 2, "reduce": 2} {
				if n, ok := defs[name]; ok && n >= 0 && n != want {
					errs = append(errs, fmt.Errorf("%w: %s must take %d parameters, has %d", ErrBadJob, name, want, n))
				}
			}
			if scriptProg, err = starlark.FileProgram(f, isScriptPredeclared); err != nil {
				errs = append(errs, compileErr(err))
			}
		}
	}
	if len(set) == 1 && set[0] == "Func" {
		p.kind = kindValues
		if build {
			f, ok := reg.lookup(j.Func)
			if !ok {
				errs = append(errs, fmt.Errorf("%w: no Go function %q is registered on this node", ErrUnknownFunction, j.Func))
			} else {
				p.goFn = &f
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if !build {
		return nil, nil
	}

	env := predeclared(args)
	fn := func(prog *starlark.Program, name string) (*starlark.Function, error) {
		g, err := initProgram(prog, env, p.lim)
		if err != nil {
			return nil, err
		}
		f, _ := g[name].(*starlark.Function)
		return f, nil
	}
	var err error
	if filterProg != nil {
		if p.filter, err = fn(filterProg, "filter"); err != nil {
			return nil, err
		}
	}
	if aggProg != nil {
		if p.agg, err = fn(aggProg, "agg"); err != nil {
			return nil, err
		}
	}
	if byProg != nil {
		if p.by, err = fn(byProg, "by"); err != nil {
			return nil, err
		}
	}
	if scriptProg != nil {
		senv := predeclared(args)
		senv["emit"] = starlark.NewBuiltin("emit", emitBuiltin)
		g, err := initProgram(scriptProg, senv, p.lim)
		if err != nil {
			return nil, err
		}
		get := func(name string, required bool) (starlark.Callable, error) {
			v, ok := g[name]
			if !ok {
				if required {
					return nil, fmt.Errorf("%w: the script must define %s(k, v)", ErrBadJob, name)
				}
				return nil, nil
			}
			c, ok := v.(starlark.Callable)
			if !ok {
				return nil, fmt.Errorf("%w: %s is a %s, not a function", ErrBadJob, name, v.Type())
			}
			return c, nil
		}
		if p.mapFn, err = get("map", true); err != nil {
			return nil, err
		}
		if p.combineFn, err = get("combine", false); err != nil {
			return nil, err
		}
		if p.reduceFn, err = get("reduce", false); err != nil {
			return nil, err
		}
	}
	return p, nil
}
