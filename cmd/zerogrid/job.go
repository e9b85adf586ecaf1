package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/zerogrid/zerogrid/client"
)

type jobFlags struct {
	mapName, prefix, filter, agg, script, fn, args string
	stale, noHedge                                 bool
	steps                                          uint64
	deadline                                       time.Duration
	reqLabels                                      labelFlag
	reqArch                                        string
	reqRAMMB                                       uint64
}

func (j *jobFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&j.mapName, "map", "", "map to run over (required)")
	fs.StringVar(&j.prefix, "prefix", "", "only keys with this prefix")
	fs.StringVar(&j.filter, "filter", "", `Starlark expression over k and v, e.g. 'v.region == "eu"'`)
	fs.StringVar(&j.agg, "agg", "", `built-in aggregate: count | sum(E) | min(E) | max(E) | avg(E) | distinct(E) | topk(K, E), optionally "by E"`)
	fs.StringVar(&j.script, "script", "", "Starlark file defining map(k, v) [combine, reduce]")
	fs.StringVar(&j.fn, "func", "", "Go function registered in the node binary")
	fs.StringVar(&j.args, "args", "", "JSON passed to the script or function as args")
	fs.BoolVar(&j.stale, "stale", false, "run on the least-loaded replica's local state (default: the leader's linearizable view)")
	fs.BoolVar(&j.noHedge, "no-hedge", false, "do not start backup copies of straggling tasks")
	fs.Uint64Var(&j.steps, "steps", 0, "Starlark step budget per task (0: node default)")
	fs.DurationVar(&j.deadline, "task-deadline", 0, "deadline per task (0: node default)")
	fs.Var(&j.reqLabels, "require-label", "run tasks only on nodes with this label, key=value (repeatable); a partition with no such replica is read over the network")
	fs.StringVar(&j.reqArch, "require-arch", "", "run tasks only on these architectures: amd64,arm64,arm (or armv6, armv7)")
	fs.Uint64Var(&j.reqRAMMB, "require-ram-mb", 0, "run tasks only on nodes with at least this much RAM")
}

func (j *jobFlags) job() (client.Job, error) {
	if j.mapName == "" {
		return client.Job{}, fmt.Errorf("%w: --map is required", errUsage)
	}
	job := client.Job{Map: j.mapName, Prefix: []byte(j.prefix), Filter: j.filter, Agg: j.agg, Func: j.fn, Args: j.args,
		Stale: j.stale, NoHedge: j.noHedge, Steps: j.steps, Deadline: j.deadline}
	job.Requires.Labels = j.reqLabels.m
	job.Requires.Arch = splitAddrs(j.reqArch)
	job.Requires.MinRAM = j.reqRAMMB << 20
	if j.script != "" {
		src, err := os.ReadFile(j.script)
		if err != nil {
			return client.Job{}, fmt.Errorf("read script: %w", err)
		}
		job.Script = string(src)
	}
	return job, nil
}

func runJob(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "run" && args[0] != "explain") {
		fmt.Fprintln(stderr, "Usage: zerogrid job run|explain --map MAP (--agg AGG | --script FILE | --func NAME) [--filter EXPR] [flags]")
		return errUsage
	}
	sub := args[0]
	var jf jobFlags
	var into string
	var asJSON, quiet bool
	return clientCommand(ctx, args[1:], stderr, "job "+sub, "job "+sub+" --map MAP (--agg AGG | --script FILE | --func NAME) [--filter EXPR] [flags]",
		exactly(0),
		func(fs *flag.FlagSet) {
			jf.register(fs)
			fs.StringVar(&into, "into", "", "write the result groups into this map (key = group, value = JSON)")
			fs.BoolVar(&asJSON, "json", false, "print the result as JSON")
			fs.BoolVar(&quiet, "quiet", false, "no progress bar")
			_ = fs.Set("timeout", "1h") // the shared default suits single calls, not jobs
		},
		func(ctx context.Context, cl *client.Client, _ []string) error {
			job, err := jf.job()
			if err != nil {
				return err
			}
			return jobCommand(ctx, cl, sub, job, into, asJSON, quiet, stdout, stderr)
		})
}

func jobCommand(ctx context.Context, cl *client.Client, sub string, job client.Job, into string, asJSON, quiet bool, stdout, stderr io.Writer) error {
	if sub == "explain" {
		tasks, summary, err := cl.Explain(ctx, job)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PARTITION\tNODE\tWHY\tFALLBACKS")
		for _, t := range tasks {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", t.Partition, t.Node, t.Reason, strings.Join(t.Fallbacks, ","))
		}
		tw.Flush()
		fmt.Fprintln(stdout, summary)
		return nil
	}

	run, err := cl.Submit(ctx, job)
	if err != nil {
		return err
	}
	var res *client.JobResult
	for res == nil {
		ev, err := run.Next()
		if err != nil {
			if !quiet {
				fmt.Fprintln(stderr)
			}
			return err
		}
		if p := ev.Progress; p != nil && !quiet {
			fmt.Fprintf(stderr, "\r%s %d/%d tasks  retries %d  hedges %d ", bar(p.Done, p.Total, 30), p.Done, p.Total, p.Retries, p.Hedges)
		}
		res = ev.Result
	}
	if !quiet {
		var read, sent, moved int64
		for _, t := range res.Tasks {
			read += t.BytesRead
			sent += t.BytesSent
			moved += t.BytesNetwork
		}
		fmt.Fprintf(stderr, "\r%s %d/%d tasks  retries %d  hedges %d  in %v; read %s where the data lives, sent %s",
			bar(1, 1, 30), len(res.Tasks), len(res.Tasks), res.Retries, res.Hedges, res.Duration.Round(time.Millisecond), humanBytes(uint64(read)), humanBytes(uint64(sent)))
		if moved > 0 {
			fmt.Fprintf(stderr, "; moved %s of data to compute", humanBytes(uint64(moved)))
		}
		fmt.Fprintln(stderr)
	}
	if into != "" {
		n, err := cl.WriteResult(ctx, into, res)
		if err != nil {
			return fmt.Errorf("wrote %d of %d groups into %s: %w", n, len(res.Groups), into, err)
		}
		fmt.Fprintf(stderr, "wrote %d groups into map %s\n", n, into)
	}
	if asJSON {
		_, err := fmt.Fprintf(stdout, "%s\n", res.JSON)
		return err
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tVALUE")
	for _, g := range res.Groups {
		v, _ := json.Marshal(g.Value)
		key := g.Key
		if key == "" {
			key = "(all)"
		}
		fmt.Fprintf(tw, "%s\t%s\n", key, v)
	}
	return tw.Flush()
}

func bar(done, total, width int) string {
	if total <= 0 {
		total = 1
	}
	n := done * width / total
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}

func runApply(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var script, procArgs string
	return clientCommand(ctx, args, stderr, "apply", "apply MAP KEY --script FILE [--args JSON]  (entry processor: process(key, value, args))",
		exactly(2),
		func(fs *flag.FlagSet) {
			fs.StringVar(&script, "script", "", "Starlark file defining process(key, value, args) (required)")
			fs.StringVar(&procArgs, "args", "", "JSON passed as args")
		},
		func(ctx context.Context, cl *client.Client, pos []string) error {
			if script == "" {
				return fmt.Errorf("%w: --script is required", errUsage)
			}
			src, err := os.ReadFile(script)
			if err != nil {
				return fmt.Errorf("read script: %w", err)
			}
			v, ver, deleted, err := cl.Map(pos[0]).Apply(ctx, []byte(pos[1]), string(src), procArgs)
			if err != nil {
				return err
			}
			if deleted {
				fmt.Fprintln(stdout, "deleted")
				return nil
			}
			fmt.Fprintf(stdout, "%s\n", v)
			fmt.Fprintf(stderr, "version=%d\n", ver)
			return nil
		})
}
