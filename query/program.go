package query

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"sort"
	"strconv"

	"go.starlark.net/starlark"
)

// Program is a compiled job. It holds no per-task state, so RunTask,
// Merge and Finalize may be called concurrently (on different partials).
type Program struct {
	job       Job
	lim       Limits
	args      starlark.Value // frozen
	argsBytes []byte
	kind      kind
	k         int    // topk's K
	aggText   string // e.g. "sum(v.amount)", for messages
	hasBy     bool
	needV     bool // some expression reads v: decode values

	filter, agg, by             *starlark.Function
	fastFilter, fastAgg, fastBy *fastExpr // Go forms of the above, when simple enough

	mapFn, combineFn, reduceFn starlark.Callable
	goFn                       *GoFunc
}

// Compile checks the job (as Validate does), resolves Func in reg (which
// may be nil when no Go functions are offered), compiles every expression
// once and runs the script's top level under the job's limits.
func Compile(job Job, reg *Registry) (*Program, error) {
	p, err := compileJob(job, reg, true)
	if err != nil {
		return nil, err
	}
	p.argsBytes = []byte(job.Args)
	return p, nil
}

// Limits are the job's limits with defaults filled in.
func (p *Program) Limits() Limits { return p.lim }

// TaskStats describe one task.
type TaskStats struct {
	Entries   int64 // entries scanned
	Matched   int64 // entries that passed the filter
	BytesRead int64 // key and value bytes scanned
	Emitted   int64 // values aggregated (built-ins) or emitted (scripts, Go functions)
}

// taskLocal is the thread-local key under which emit finds its task.
const taskLocal = "zerogrid.task"

// combineEvery: a key's values are combined once this many are pending,
// which bounds a task's memory by its number of keys.
const combineEvery = 32

type task struct {
	p        *Program
	r        *run
	part     *Partial
	stats    TaskStats
	single   *state // the group of a job without by
	exprArgs starlark.Tuple
	tmp      big.Int
	scratch  []byte
	dirty    []gkey   // keys with more than one pending value
	members  []member // reused by the fast path
	inMap    bool
}

// RunTask runs the job over one partition. scan must call fn for every
// (key, value) of the partition in key order, already restricted to the
// job's map and prefix, one call at a time, and stop at fn's first error
// (returning it, wrapped or not); key and value need only be valid during
// the call. RunTask filters, maps and combines
// locally and returns the partial. A limit stops it with an error wrapping
// ErrStepBudget, ErrDeadline, ErrOutputCap or ErrMemoryCap; cancelling ctx
// stops it with ctx's error.
func (p *Program) RunTask(ctx context.Context, scan func(fn func(key, value []byte) error) error) (*Partial, TaskStats, error) {
	r := newRun(ctx, p.lim, "task")
	defer r.close()
	t := &task{p: p, r: r, part: newPartial(p.kind, p.k), exprArgs: make(starlark.Tuple, 2)}
	r.th.SetLocal(taskLocal, t)
	if !p.hasBy && p.kind != kindValues {
		t.single = t.part.group(gkey{})
	}
	err := scan(t.record)
	if err == nil {
		err = t.flush()
	}
	if cause := r.failed(); cause != nil && err != nil && !errors.Is(err, cause) {
		err = cause // the scan reported the limit in its own words
	}
	if err != nil {
		return nil, t.stats, err
	}
	return t.part, t.stats, nil
}

func (t *task) record(key, value []byte) error {
	err := t.process(key, value)
	if err != nil && errors.Is(err, ErrScript) && t.r.failed() == nil {
		return fmt.Errorf("%w\n(processing key %q)", err, key)
	}
	return err
}

func (t *task) process(key, value []byte) error {
	if err := t.r.failed(); err != nil {
		return err
	}
	p := t.p
	t.stats.Entries++
	t.stats.BytesRead += int64(len(key) + len(value))
	if p.filter == nil && p.kind == kindCount && !p.hasBy {
		t.stats.Matched++
		t.stats.Emitted++
		t.single.n++
		return nil
	}
	passed := p.filter == nil // the filter is known to hold
	if p.fastFilter != nil || p.fastAgg != nil || p.fastBy != nil {
		fr := fastRec{key: key, raw: value, buf: &t.members}
		if !passed && p.fastFilter != nil {
			ok, sure := fr.truth(p.fastFilter)
			if sure && !ok {
				return nil
			}
			passed = sure
		}
		if passed && p.kind != kindValues {
			if done, err := t.fastAccumulate(&fr, key); done {
				return err
			}
		}
	}
	k, v := starlark.Value(starlark.String(key)), starlark.Value(starlark.None)
	if p.needV {
		v = decodeStored(value)
	}
	t.exprArgs[0], t.exprArgs[1] = k, v
	if !passed {
		ok, err := t.r.call(p.filter, t.exprArgs...)
		if err != nil {
			return err
		}
		if !ok.Truth() {
			return nil
		}
	}
	t.stats.Matched++
	if p.kind == kindValues {
		return t.mapRecord(key, value, k, v)
	}
	g := t.single
	if p.by != nil {
		bv, err := t.r.call(p.by, t.exprArgs...)
		if err != nil {
			return err
		}
		gk, err := groupKey(bv)
		if err != nil {
			return fmt.Errorf("%w: by: %v", ErrScript, err)
		}
		g = t.part.group(gk)
	}
	var x any
	if p.agg != nil {
		res, err := t.r.call(p.agg, t.exprArgs...)
		if err != nil {
			return err
		}
		if x, err = toGo(res); err != nil {
			return t.valueErr("%v", err)
		}
	}
	return t.accumulate(g, key, x)
}

// fastAccumulate aggregates a matched record without Starlark when the by
// and aggregate expressions have fast forms; done is false when Starlark
// must do it.
func (t *task) fastAccumulate(fr *fastRec, key []byte) (done bool, err error) {
	p := t.p
	g := t.single
	if p.by != nil {
		if p.fastBy == nil {
			return false, nil
		}
		bv, ok := fr.value(p.fastBy)
		if !ok {
			return false, nil
		}
		g = t.part.group(groupKeyGo(bv))
	}
	var x any
	if p.agg != nil {
		if p.fastAgg == nil {
			return false, nil
		}
		var ok bool
		if x, ok = fr.value(p.fastAgg); !ok {
			return false, nil
		}
	}
	t.stats.Matched++
	return true, t.accumulate(g, key, x)
}

func (t *task) capErr() error {
	err := fmt.Errorf("%w: the partial reached %d bytes, limit %d", ErrOutputCap, t.part.size, t.p.lim.OutputBytes)
	t.r.fail(err)
	return err
}

func (t *task) valueErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrScript, t.p.aggText, fmt.Sprintf(format, args...))
}

// accumulate feeds one matched entry's value (a Go value; nil is skipped)
// into a built-in aggregate.
func (t *task) accumulate(g *state, key []byte, x any) error {
	p := t.p
	if p.kind == kindCount {
		g.n++
		t.stats.Emitted++
		return t.checkSize()
	}
	if x == nil {
		return nil
	}
	t.stats.Emitted++
	switch p.kind {
	case kindSum, kindAvg:
		switch x := x.(type) {
		case int64:
			g.sum.addInt(x)
		case float64:
			g.sum.addFloat(x, &t.tmp)
		default:
			return t.valueErr("%s is a %s, want int or float", repr(x), typeName(x))
		}
		if p.kind == kindAvg {
			g.n++
		}
	case kindMin, kindMax:
		if err := orderable(x); err != nil {
			return t.valueErr("%v", err)
		}
		if g.val == nil {
			g.val = x
			return nil
		}
		c, err := compareScalars(x, g.val)
		if err != nil {
			return t.valueErr("%v", err)
		}
		if (p.kind == kindMin && c < 0) || (p.kind == kindMax && c > 0) {
			g.val = x
		}
	case kindDistinct:
		t.scratch = appendValue(t.scratch[:0], x, true)
		if _, seen := g.set[string(t.scratch)]; !seen {
			g.set[string(t.scratch)] = struct{}{}
			t.part.size += len(t.scratch) + 2
		}
	case kindTopK:
		if err := orderable(x); err != nil {
			return t.valueErr("%v", err)
		}
		if len(g.top) > 0 {
			if _, err := compareScalars(g.top[0].val, x); err != nil {
				return t.valueErr("%v", err)
			}
		}
		before := len(g.top)
		g.top = pushTop(g.top, p.k, topEntry{key: string(key), val: x})
		if len(g.top) > before {
			t.part.size += len(key) + sizeOf(x) + 2
		}
	}
	return t.checkSize()
}

func (t *task) checkSize() error {
	if t.part.size > t.p.lim.OutputBytes {
		return t.capErr()
	}
	return nil
}

// orderable accepts the values min, max and topk can order.
func orderable(x any) error {
	switch x.(type) {
	case int64, float64, string:
		return nil
	}
	return fmt.Errorf("%s is a %s, want a number or a string", repr(x), typeName(x))
}

func repr(x any) string {
	if s, ok := x.(string); ok {
		return strconv.Quote(s)
	}
	b, err := json.Marshal(x)
	if err != nil {
		return fmt.Sprint(x)
	}
	return string(b)
}

// groupKeyGo is groupKey for a value from the fast path.
func groupKeyGo(x any) gkey {
	switch x := x.(type) {
	case string:
		return gkey{s: x}
	case int64:
		return gkey{isInt: true, i: x}
	case float64:
		if x == math.Trunc(x) && x >= -(1<<63) && x < 1<<63 {
			return gkey{isInt: true, i: int64(x)}
		}
		return gkey{s: string(appendJSONFloat(nil, x))}
	case bool:
		return gkey{s: strconv.FormatBool(x)}
	}
	return gkey{s: "null"}
}

// groupKey turns a by value into a group key: strings as they are, ints
// (and integral floats) as ints, anything else as its JSON text.
func groupKey(x starlark.Value) (gkey, error) {
	switch x := x.(type) {
	case starlark.String:
		return gkey{s: string(x)}, nil
	case starlark.Int:
		n, err := int64Of(x)
		return gkey{isInt: true, i: n}, err
	case starlark.Float:
		f := float64(x)
		if f == math.Trunc(f) && f >= -(1<<63) && f < 1<<63 {
			return gkey{isInt: true, i: int64(f)}, nil
		}
	}
	b, err := appendStarlarkJSON(nil, x, 0)
	if err != nil {
		return gkey{}, err
	}
	return gkey{s: string(b)}, nil
}

// better orders topk entries: larger value first, then smaller key.
func better(a, b topEntry) bool {
	c, _ := compareScalars(a.val, b.val) // same class, checked on entry
	if c != 0 {
		return c > 0
	}
	return a.key < b.key
}

// pushTop keeps the k best entries in a min-heap (worst at the root).
func pushTop(top []topEntry, k int, e topEntry) []topEntry {
	if len(top) < k {
		top = append(top, e)
		for i := len(top) - 1; i > 0; {
			parent := (i - 1) / 2
			if !better(top[parent], top[i]) {
				break
			}
			top[parent], top[i] = top[i], top[parent]
			i = parent
		}
		return top
	}
	if !better(e, top[0]) {
		return top
	}
	top[0] = e
	siftDown(top, 0)
	return top
}

func siftDown(top []topEntry, i int) {
	for {
		worst, l, r := i, 2*i+1, 2*i+2
		if l < len(top) && better(top[worst], top[l]) {
			worst = l
		}
		if r < len(top) && better(top[worst], top[r]) {
			worst = r
		}
		if worst == i {
			return
		}
		top[i], top[worst] = top[worst], top[i]
		i = worst
	}
}

// sortedTop returns the entries best first.
func sortedTop(top []topEntry) []topEntry {
	out := slices.Clone(top)
	sort.Slice(out, func(i, j int) bool { return better(out[i], out[j]) })
	return out
}

// mapRecord runs the script's map or the Go function on one entry.
func (t *task) mapRecord(key, value []byte, k, v starlark.Value) error {
	p := t.p
	t.inMap = true
	defer func() { t.inMap = false }()
	if p.goFn != nil {
		err := p.goFn.Map(t.r.ctx, key, value, p.argsBytes, t.goEmit)
		if err == nil {
			return nil
		}
		if cause := t.r.failed(); cause != nil {
			return cause
		}
		if isQueryErr(err) {
			return err
		}
		return fmt.Errorf("%w: func %s: %w", ErrScript, p.job.Func, err)
	}
	_, err := t.r.call(p.mapFn, k, v)
	return err
}

func (t *task) goEmit(key string, value any) error {
	if err := t.r.failed(); err != nil {
		return err
	}
	x, err := normalizeGo(value)
	if err != nil {
		return fmt.Errorf("%w: emit(%q): %v", ErrScript, key, err)
	}
	return t.emit(gkey{s: key}, x)
}

// emitBuiltin is Starlark's emit(key, value).
func emitBuiltin(th *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	t, _ := th.Local(taskLocal).(*task)
	if t == nil || !t.inMap {
		return nil, errors.New("emit may only be called while map runs")
	}
	var key, val starlark.Value
	if err := starlark.UnpackPositionalArgs("emit", args, kwargs, 2, &key, &val); err != nil {
		return nil, err
	}
	var gk gkey
	switch key := key.(type) {
	case starlark.String:
		gk.s = string(key)
	case starlark.Int:
		n, err := int64Of(key)
		if err != nil {
			return nil, fmt.Errorf("emit: key: %v", err)
		}
		gk = gkey{isInt: true, i: n}
	default:
		return nil, fmt.Errorf("emit: key must be a string or an int, got %s", key.Type())
	}
	x, err := toGo(val)
	if err != nil {
		return nil, fmt.Errorf("emit: value: %v", err)
	}
	if err := t.emit(gk, x); err != nil {
		return nil, err
	}
	return starlark.None, nil
}

func (t *task) emit(gk gkey, x any) error {
	p := t.p
	t.stats.Emitted++
	g := t.part.group(gk)
	g.vals = append(g.vals, x)
	sz := sizeOf(x)
	g.vsz += sz
	t.part.size += sz
	if len(g.vals) == 2 {
		t.dirty = append(t.dirty, gk)
	}
	if p.hasCombine() && len(g.vals) >= combineEvery {
		if err := t.combine(gk, g); err != nil {
			return err
		}
	}
	if t.part.size > p.lim.OutputBytes {
		if p.hasCombine() {
			if err := t.flush(); err != nil {
				return err
			}
		}
		if t.part.size > p.lim.OutputBytes {
			return t.capErr()
		}
	}
	return nil
}

// flush combines every key with more than one pending value.
func (t *task) flush() error {
	if !t.p.hasCombine() {
		return nil
	}
	for _, gk := range t.dirty {
		if g := t.part.groups[gk]; len(g.vals) > 1 {
			if err := t.combine(gk, g); err != nil {
				return err
			}
		}
	}
	t.dirty = t.dirty[:0]
	return nil
}

func (t *task) combine(gk gkey, g *state) error {
	inMap := t.inMap
	t.inMap = false // combine may not emit
	out, err := t.p.combineValues(t.r, gk, g.vals)
	t.inMap = inMap
	if err != nil {
		return err
	}
	clear(g.vals)
	g.vals = append(g.vals[:0], out)
	sz := sizeOf(out)
	t.part.size += sz - g.vsz
	g.vsz = sz
	return nil
}

func (p *Program) hasCombine() bool {
	return p.combineFn != nil || (p.goFn != nil && p.goFn.Combine != nil)
}

// keyValue is a group key as Starlark sees it.
func keyValue(k gkey) starlark.Value {
	if k.isInt {
		return starlark.MakeInt64(k.i)
	}
	return starlark.String(k.s)
}

func toStarlarkList(vals []any) *starlark.List {
	elems := make([]starlark.Value, len(vals))
	for i, v := range vals {
		elems[i] = toStarlark(v)
	}
	return starlark.NewList(elems)
}

// combineValues runs combine (Starlark or Go) on some values of one key.
func (p *Program) combineValues(r *run, gk gkey, vals []any) (any, error) {
	if p.goFn != nil {
		out, err := p.goFn.Combine(gk.String(), slices.Clone(vals))
		if err != nil {
			return nil, fmt.Errorf("%w: func %s: combine(%q): %w", ErrScript, p.job.Func, gk, err)
		}
		if out, err = normalizeGo(out); err != nil {
			return nil, fmt.Errorf("%w: func %s: combine(%q) returned %v", ErrScript, p.job.Func, gk, err)
		}
		return out, nil
	}
	res, err := r.call(p.combineFn, keyValue(gk), toStarlarkList(vals))
	if err != nil {
		return nil, err
	}
	out, err := toGo(res)
	if err != nil {
		return nil, fmt.Errorf("%w: combine(%q) returned %v", ErrScript, gk, err)
	}
	return out, nil
}

func (p *Program) checkPartial(part *Partial) error {
	if part.kind != p.kind || part.k != p.k {
		return fmt.Errorf("%w: a %s partial (K=%d) does not belong to this %s job (K=%d)", ErrBadPartial, part.kind, part.k, p.kind, p.k)
	}
	return nil
}

// Merge folds src into dst; it is associative and commutative (for
// scripts, as far as combine is). Merge takes src over: do not use src
// afterwards. It may run combine, under the job's limits.
func (p *Program) Merge(dst, src *Partial) error {
	if dst == nil {
		return fmt.Errorf("%w: nil destination", ErrBadPartial)
	}
	if src == nil {
		return nil
	}
	if err := p.checkPartial(dst); err != nil {
		return err
	}
	if err := p.checkPartial(src); err != nil {
		return err
	}
	var r *run
	defer func() {
		if r != nil {
			r.close()
		}
	}()
	for key, sg := range src.groups {
		dg, ok := dst.groups[key]
		if !ok {
			dst.groups[key] = sg
			dst.size += len(key.s) + 24 + stateSize(p.kind, sg)
			continue
		}
		switch p.kind {
		case kindCount:
			if dg.n > math.MaxInt64-sg.n {
				return fmt.Errorf("%w: count overflows int64", ErrScript)
			}
			dg.n += sg.n
		case kindSum:
			dg.sum.merge(&sg.sum)
		case kindAvg:
			dg.sum.merge(&sg.sum)
			if dg.n > math.MaxInt64-sg.n {
				return fmt.Errorf("%w: count overflows int64", ErrScript)
			}
			dg.n += sg.n
		case kindMin, kindMax:
			if sg.val == nil {
				continue
			}
			if dg.val == nil {
				dg.val = sg.val
				continue
			}
			c, err := compareScalars(sg.val, dg.val)
			if err != nil {
				return fmt.Errorf("%w: %s: group %q: %v", ErrScript, p.aggText, key, err)
			}
			if (p.kind == kindMin && c < 0) || (p.kind == kindMax && c > 0) {
				dg.val = sg.val
			}
		case kindDistinct:
			for m := range sg.set {
				if _, ok := dg.set[m]; !ok {
					dg.set[m] = struct{}{}
					dst.size += len(m) + 2
				}
			}
		case kindTopK:
			if len(dg.top) > 0 && len(sg.top) > 0 {
				if _, err := compareScalars(dg.top[0].val, sg.top[0].val); err != nil {
					return fmt.Errorf("%w: %s: group %q: %v", ErrScript, p.aggText, key, err)
				}
			}
			all := sortedTop(append(slices.Clone(dg.top), sg.top...))
			if len(all) > p.k {
				all = all[:p.k]
			}
			slices.Reverse(all) // worst first: a valid min-heap
			dg.top = all
		case kindValues:
			dg.vals = append(dg.vals, sg.vals...)
			dg.vsz += sg.vsz
			dst.size += sg.vsz
			if p.hasCombine() && len(dg.vals) >= combineEvery {
				if r == nil {
					r = newRun(context.Background(), p.lim, "merge")
				}
				out, err := p.combineValues(r, key, dg.vals)
				if err != nil {
					return err
				}
				dg.vals = []any{out}
				dst.size -= dg.vsz
				dg.vsz = sizeOf(out)
				dst.size += dg.vsz
			}
		}
	}
	return nil
}

func stateSize(k kind, g *state) int {
	switch k {
	case kindDistinct:
		n := 0
		for m := range g.set {
			n += len(m) + 2
		}
		return n
	case kindTopK:
		n := 0
		for _, e := range g.top {
			n += len(e.key) + sizeOf(e.val) + 2
		}
		return n
	case kindValues:
		return g.vsz
	}
	return 0
}

// Result is a finished job's answer.
type Result struct {
	// Groups are sorted by key: int keys numerically first, then string
	// keys bytewise. A job without "by" (or emit keys) has one group, Key "".
	Groups []Group
}

// Group is one key's result. Value is JSON-able: nil, int64, float64,
// string, bool, []any or map[string]any.
type Group struct {
	Key   string
	Value any
}

// JSON encodes the result as {"groups":[{"key":...,"value":...},...]}.
func (r *Result) JSON() ([]byte, error) {
	type group struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	}
	out := struct {
		Groups []group `json:"groups"`
	}{Groups: make([]group, 0, len(r.Groups))}
	for _, g := range r.Groups {
		out.Groups = append(out.Groups, group{g.Key, g.Value})
	}
	return json.Marshal(out)
}

// Finalize turns the merged partial of every task into the result: sum and
// avg are rounded, topk ordered, and for scripts reduce runs (or, without
// reduce, combine folds each key's values; without either a key's value is
// the list of its values). Values reach combine and reduce sorted by their
// encoding, so results do not depend on task or merge order. A nil part
// means no task produced anything.
func (p *Program) Finalize(ctx context.Context, part *Partial) (*Result, error) {
	if part == nil {
		part = newPartial(p.kind, p.k)
	}
	if err := p.checkPartial(part); err != nil {
		return nil, err
	}
	if !p.hasBy && p.kind != kindValues {
		part.group(gkey{})
	}
	var r *run
	defer func() {
		if r != nil {
			r.close()
		}
	}()
	res := &Result{Groups: make([]Group, 0, len(part.groups))}
	for _, key := range part.sortedKeys() {
		g := part.groups[key]
		var v any
		var err error
		switch p.kind {
		case kindCount:
			v = g.n
		case kindSum:
			v, err = g.sum.result()
		case kindAvg:
			v, err = g.sum.mean(g.n)
		case kindMin, kindMax:
			v = g.val
		case kindDistinct:
			v = int64(len(g.set))
		case kindTopK:
			top := sortedTop(g.top)
			list := make([]any, len(top))
			for i, e := range top {
				list[i] = map[string]any{"key": e.key, "value": e.val}
			}
			v = list
		case kindValues:
			if r == nil {
				r = newRun(ctx, p.lim, "finalize")
			}
			v, err = p.finalValues(r, key, g.vals)
			if err != nil {
				return nil, err
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: group %q: %v", ErrScript, p.aggText, key, err)
		}
		res.Groups = append(res.Groups, Group{Key: key.String(), Value: v})
	}
	return res, nil
}

func (p *Program) finalValues(r *run, key gkey, vals []any) (any, error) {
	vals = sortValues(vals)
	switch {
	case p.reduceFn != nil:
		res, err := r.call(p.reduceFn, keyValue(key), toStarlarkList(vals))
		if err != nil {
			return nil, err
		}
		out, err := toGo(res)
		if err != nil {
			return nil, fmt.Errorf("%w: reduce(%q) returned %v", ErrScript, key, err)
		}
		return out, nil
	case p.goFn != nil && p.goFn.Reduce != nil:
		if err := r.failed(); err != nil {
			return nil, err
		}
		out, err := p.goFn.Reduce(key.String(), vals)
		if err != nil {
			return nil, fmt.Errorf("%w: func %s: reduce(%q): %w", ErrScript, p.job.Func, key, err)
		}
		if out, err = normalizeGo(out); err != nil {
			return nil, fmt.Errorf("%w: func %s: reduce(%q) returned %v", ErrScript, p.job.Func, key, err)
		}
		return out, nil
	case p.hasCombine():
		if len(vals) == 1 {
			return vals[0], nil
		}
		return p.combineValues(r, key, vals)
	}
	return vals, nil
}

// sortValues orders values by their canonical encoding.
func sortValues(vals []any) []any {
	type enc struct {
		b []byte
		v any
	}
	es := make([]enc, len(vals))
	for i, v := range vals {
		es[i] = enc{appendValue(nil, v, false), v}
	}
	slices.SortStableFunc(es, func(a, b enc) int { return bytes.Compare(a.b, b.b) })
	out := make([]any, len(vals))
	for i, e := range es {
		out[i] = e.v
	}
	return out
}
