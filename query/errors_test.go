package query

import (
	"errors"
	"strings"
	"testing"

	"github.com/zerogrid/zerogrid/grid"
)

func TestValidate(t *testing.T) {
	cases := []struct {
		name string
		job  Job
		want []error
		says []string // substrings of the message
	}{
		{"ok agg", Job{Map: "m", Agg: "sum(v.amount) by v.shop", Filter: `v.region == "eu"`}, nil, nil},
		{"ok by with 'by' in a string", Job{Map: "m", Agg: `sum(v["a by b"]) by v["c by d"]`}, nil, nil},
		{"ok by tuple", Job{Map: "m", Agg: "count by v.a, v.b"}, nil, nil},
		{"ok script", Job{Map: "m", Script: wordCount}, nil, nil},
		{"ok func", Job{Map: "m", Func: "anything"}, nil, nil},
		{"filter syntax", Job{Map: "m", Agg: "count", Filter: "v.region =="}, []error{ErrSyntax}, []string{"filter:1:12"}},
		{"agg syntax", Job{Map: "m", Agg: "sum(v.amount +)"}, []error{ErrSyntax}, []string{"agg:1:15"}},
		{"by syntax", Job{Map: "m", Agg: "sum(v.amount) by v."}, []error{ErrSyntax}, []string{"agg:1:"}},
		{"script syntax", Job{Map: "m", Script: "def map(k, v):\n    emit(k,\n"}, []error{ErrSyntax}, []string{"script:"}},
		{"unknown aggregate", Job{Map: "m", Agg: "median(v.x)"}, []error{ErrUnknownAggregate}, []string{`"median"`}},
		{"unknown aggregate shape", Job{Map: "m", Agg: "v.x + 1"}, []error{ErrUnknownAggregate}, nil},
		{"unknown name in filter", Job{Map: "m", Agg: "count", Filter: "lookup(v.x) > 1"}, []error{ErrUnknownFunction}, []string{"filter:1:1", "undefined: lookup"}},
		{"unknown name in agg", Job{Map: "m", Agg: "sum(frobnicate(v))"}, []error{ErrUnknownFunction}, []string{"agg:1:5"}},
		{"unknown name in script", Job{Map: "m", Script: "def map(k, v):\n    x = 1\n    emitt(k, x)\n"}, []error{ErrUnknownFunction}, []string{"script:3:5", "emitt"}},
		{"no work", Job{Map: "m"}, []error{ErrBadJob}, []string{"set one of"}},
		{"two kinds", Job{Map: "m", Agg: "count", Script: wordCount}, []error{ErrBadJob}, []string{"Agg and Script"}},
		{"bad K", Job{Map: "m", Agg: "topk(0, v.x)"}, []error{ErrBadJob}, []string{"K"}},
		{"K not literal", Job{Map: "m", Agg: "topk(args.k, v.x)"}, []error{ErrBadJob}, nil},
		{"huge K", Job{Map: "m", Agg: "topk(100000000000000000000, v.x)"}, []error{ErrBadJob}, nil},
		{"arity", Job{Map: "m", Agg: "sum(v.x, v.y)"}, []error{ErrBadJob}, nil},
		{"count with an argument", Job{Map: "m", Agg: "count(v.x)"}, []error{ErrBadJob}, nil},
		{"bad map name", Job{Map: "no spaces", Agg: "count"}, []error{ErrBadJob, grid.ErrInvalidMapName}, nil},
		{"bad args", Job{Map: "m", Agg: "count", Args: "{nope"}, []error{ErrBadJob}, []string{"Args"}},
		{"no map function", Job{Map: "m", Script: "def mapper(k, v):\n    pass\n"}, []error{ErrBadJob}, []string{"map(k, v)"}},
		{"map arity", Job{Map: "m", Script: "def map(v):\n    pass\n"}, []error{ErrBadJob}, nil},
		{"negative limits", Job{Map: "m", Agg: "count", Limits: Limits{Deadline: -1}}, []error{ErrBadJob}, nil},
		{
			"every problem at once",
			Job{Map: "", Agg: "median(v)", Filter: "v ==", Args: "[", Limits: Limits{OutputBytes: -1}},
			[]error{ErrBadJob, ErrSyntax, ErrUnknownAggregate, grid.ErrInvalidMapName},
			[]string{"Args", "filter:1:", "median", "OutputBytes"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.job.Validate()
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate passed")
			}
			for _, w := range c.want {
				if !errors.Is(err, w) {
					t.Errorf("err = %v, want it to be %v", err, w)
				}
			}
			for _, s := range c.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("err = %v, want it to mention %q", err, s)
				}
			}
			if !strings.HasPrefix(err.Error(), "query: ") {
				t.Errorf("err = %v, want the query: prefix", err)
			}
			if _, cerr := Compile(c.job, nil); cerr == nil {
				t.Errorf("Compile accepted what Validate rejects")
			}
		})
	}
}

func TestRuntimeErrors(t *testing.T) {
	data := [][]kv{{{"a", []byte(`{"amount": 5, "name": "x"}`)}}}
	cases := []struct {
		job  Job
		want error
		says []string
	}{
		{Job{Agg: `sum(v.amount + "x")`}, ErrScript, []string{"agg:1:", "int + string"}},
		{Job{Agg: "count", Filter: `v.amount + "x"`}, ErrScript, []string{"filter:1:", "int + string"}},
		{Job{Script: "def map(k, v):\n    emit(k, v.amount + \"x\")\n"}, ErrScript, []string{"script:2:", "int + string", "Traceback"}},
		{Job{Agg: "sum(v.name)"}, ErrScript, []string{"sum(v.name)", "want int or float"}},
		{Job{Agg: "min(v)"}, ErrScript, []string{"want a number or a string"}},
		{Job{Agg: "count", Filter: "v.missing"}, ErrScript, []string{"missing"}},
		{Job{Script: "def map(k, v):\n    fail('bad record', k)\n"}, ErrScript, []string{"bad record"}},
		{Job{Script: "def map(k, v):\n    emit(k, 1)\ndef reduce(k, vs):\n    return vs[0] + 'x'\n"}, ErrScript, []string{"script:4:"}},
		{Job{Script: "def map(k, v):\n    emit(k, 1)\n    emit(k, 2)\ndef combine(k, vs):\n    return None + 1\n"}, ErrScript, []string{"script:5:"}},
		{Job{Script: "def map(k, v):\n    args.append(1)\n", Args: "[]"}, ErrScript, []string{"frozen"}},
		{Job{Script: "def map(k, v):\n    print('no I/O')\n    emit(k, 1)\n"}, nil, nil},
	}
	for _, c := range cases {
		_, err := runJob(t, c.job, nil, data, nil)
		if c.want == nil {
			if err != nil {
				t.Errorf("%+v: %v", c.job, err)
			}
			continue
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%+v: err = %v, want %v", c.job, err, c.want)
			continue
		}
		for _, s := range c.says {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%+v: err = %v, want it to mention %q", c.job, err, s)
			}
		}
	}
}

func TestNoIOBuiltins(t *testing.T) {
	for _, name := range []string{"open", "exec", "eval", "load_file", "os", "time", "http"} {
		job := Job{Map: "m", Agg: "count", Filter: name + " != None"}
		if err := job.Validate(); !errors.Is(err, ErrUnknownFunction) {
			t.Errorf("%s: err = %v, want it undefined", name, err)
		}
	}
	job := Job{Map: "m", Script: "load('x.star', 'y')\ndef map(k, v):\n    pass\n"}
	if _, err := Compile(job, nil); err == nil {
		t.Errorf("load accepted")
	}
}

func TestMergeRejectsForeignPartials(t *testing.T) {
	count := mustCompile(t, Job{Agg: "count"})
	sum := mustCompile(t, Job{Agg: "sum(v)"})
	p, _, err := count.RunTask(t.Context(), scanOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	q, _, err := sum.RunTask(t.Context(), scanOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := sum.Merge(q, p); !errors.Is(err, ErrBadPartial) {
		t.Fatalf("merge count into sum: %v", err)
	}
	if _, err := sum.Finalize(t.Context(), p); !errors.Is(err, ErrBadPartial) {
		t.Fatalf("finalize a count partial with a sum program: %v", err)
	}
}
