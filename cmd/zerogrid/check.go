package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// errCheckFailed makes `zerogrid check` exit non-zero when replicas differ.
var errCheckFailed = errors.New("check: replicas differ or partitions could not be checked")

func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var noRepair, verbose bool
	var parts string
	return clientCommand(ctx, args, stderr, "check", "check [--partitions 1,2] [--no-repair] [-v] [--addr ADDR]", exactly(0),
		func(fs *flag.FlagSet) {
			fs.BoolVar(&noRepair, "no-repair", false, "only report: do not quarantine replicas that differ from their majority")
			fs.BoolVar(&verbose, "v", false, "print every partition, not only those with a problem")
			fs.StringVar(&parts, "partitions", "", "comma-separated partitions to check (default all)")
		},
		func(ctx context.Context, cl *client.Client, _ []string) error {
			var opts []client.CheckOption
			if noRepair {
				opts = append(opts, client.NoRepair())
			}
			if parts != "" {
				var ps []int
				for _, s := range strings.Split(parts, ",") {
					p, err := strconv.Atoi(strings.TrimSpace(s))
					if err != nil {
						return fmt.Errorf("--partitions: %q is not a partition number", s)
					}
					ps = append(ps, p)
				}
				opts = append(opts, client.CheckPartitions(ps...))
			}
			rep, err := cl.Check(ctx, opts...)
			if err != nil {
				return err
			}
			return printCheck(stdout, rep, verbose)
		})
}

func printCheck(w io.Writer, rep client.CheckReport, verbose bool) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PARTITION\tINDEX\tAGREE\tDIFFER\tDETAIL")
	bad := 0
	for _, p := range rep.Partitions {
		ok := p.Error == "" && len(p.Differing) == 0
		if !ok {
			bad++
		}
		if ok && !verbose {
			continue
		}
		var detail []string
		if p.Error != "" {
			detail = append(detail, p.Error)
		}
		for _, d := range p.Replicas {
			switch {
			case d.State != "done":
				detail = append(detail, fmt.Sprintf("%s %s %s", d.Node, d.State, d.Error))
			case d.CRCErrors > 0:
				detail = append(detail, fmt.Sprintf("%s: %d entries fail their CRC32C", d.Node, d.CRCErrors))
			case verbose || slices.Contains(p.Differing, d.Node):
				detail = append(detail, fmt.Sprintf("%s: %016x over %d keys", d.Node, d.Digest, d.Entries))
			}
		}
		if len(p.Quarantined) > 0 {
			detail = append(detail, "quarantined for rebuild: "+strings.Join(p.Quarantined, ","))
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\n", p.Partition, p.Index, orDash(p.Agreeing), orDash(p.Differing), strings.Join(detail, "; "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d partitions checked, %d clean, %d with a problem\n", len(rep.Partitions), len(rep.Partitions)-bad, bad)
	if bad > 0 {
		return errCheckFailed
	}
	return nil
}

func orDash(ids []string) string {
	if len(ids) == 0 {
		return "-"
	}
	return strings.Join(ids, ",")
}

// integritySummary is a node's integrity column in `zerogrid status`.
func integritySummary(s *gridpb.IntegrityStats) string {
	if s == nil {
		return "-"
	}
	out := fmt.Sprintf("scrubs %d, corrupt %d+%d log, quarantined %d, rebuilt %d",
		s.ScrubPasses, s.CorruptEntries, s.CorruptLogEntries, s.Quarantines, s.Rebuilds)
	if len(s.Quarantined) > 0 {
		out += fmt.Sprintf(" (now: %v)", s.Quarantined)
	}
	return out
}
