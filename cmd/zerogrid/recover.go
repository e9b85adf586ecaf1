package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"text/tabwriter"

	"github.com/zerogrid/zerogrid/client"
)

func runRecover(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var from string
	var yes, forget bool
	return clientCommand(ctx, args, stderr, "recover", "recover PARTITION [--from NODE] [--forget-unreachable] [--yes] [--addr ADDR]", exactly(1),
		func(fs *flag.FlagSet) {
			fs.StringVar(&from, "from", "", "the replica to keep (default: the healthy one whose log reaches furthest)")
			fs.BoolVar(&forget, "forget-unreachable", false, "recover although some replicas cannot be reached (never restart their nodes with their old data)")
			fs.BoolVar(&yes, "yes", false, "do it; without --yes only say what would be done")
		},
		func(ctx context.Context, cl *client.Client, pos []string) error {
			p, err := strconv.Atoi(pos[0])
			if err != nil || p < 0 {
				return fmt.Errorf("%w: %q is not a partition number", errUsage, pos[0])
			}
			opts := []client.RecoverOption{client.RecoverOperator(operatorName())}
			if from != "" {
				opts = append(opts, client.RecoverFrom(from))
			}
			if forget {
				opts = append(opts, client.ForgetUnreachable())
			}
			if !yes {
				opts = append(opts, client.RecoverDryRun())
			}
			rep, err := cl.RecoverPartition(ctx, p, opts...)
			if err != nil {
				return err
			}
			return printRecover(stdout, rep)
		})
}

// operatorName names who runs the command, for the cluster's audit record.
func operatorName() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil {
		name += "@" + h
	}
	return name
}

func printRecover(w io.Writer, rep client.RecoverReport) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REPLICA\tSTATE\tAPPLIED\tLOG ENDS (index/term)\tNOTE")
	for _, r := range rep.Replicas {
		note := r.Reason
		if r.Node == rep.From {
			note = "kept"
			if r.Role != "" {
				note += " (" + r.Role + ")"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d/%d\t%s\n", r.Node, r.State, r.Applied, r.LastIndex, r.LastTerm, note)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(rep.PossiblyLost) == 0 {
		fmt.Fprintln(w, "may be lost: nothing known (no other replica's log reaches past the kept one)")
	}
	for _, l := range rep.PossiblyLost {
		fmt.Fprintln(w, "may be lost:", l)
	}
	if rep.DryRun {
		fmt.Fprintf(w, "dry run: partition %d would be rebuilt from %s. Run again with --yes to do it.\n", rep.Partition, rep.From)
		return nil
	}
	fmt.Fprintf(w, "partition %d recovered from %s (recorded in partition table epoch %d); the cluster now re-creates its other replicas.\n",
		rep.Partition, rep.From, rep.Epoch)
	return nil
}
