package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
)

// runAudit prints the audit logs of every node, merged by time.
func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var limit int
	var asJSON bool
	return clientCommand(ctx, args, stderr, "audit", "audit [--limit N] [--json] [--addr ADDR]", exactly(0),
		func(fs *flag.FlagSet) {
			fs.IntVar(&limit, "limit", 100, "the most recent records to show, over all nodes")
			fs.BoolVar(&asJSON, "json", false, "print the records as a JSON array")
		},
		func(ctx context.Context, cl *client.Client, _ []string) error {
			table, err := cl.Table(ctx)
			if err != nil {
				return err
			}
			var all []grid.AuditRecord
			for _, nd := range table.Nodes {
				recs, err := cl.NodeAudit(ctx, nd.Addr, limit)
				if err != nil {
					fmt.Fprintf(stderr, "%s: %v\n", nd.ID, err)
					continue
				}
				all = append(all, recs...)
			}
			sort.SliceStable(all, func(i, j int) bool { return all[i].Time.Before(all[j].Time) })
			if len(all) > limit {
				all = all[len(all)-limit:]
			}
			if asJSON {
				return printJSON(stdout, append([]grid.AuditRecord{}, all...))
			}
			tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tNODE\tWHO\tFROM\tMETHOD\tWHAT\tOUTCOME")
			for _, r := range all {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.Format(time.RFC3339Nano), r.Node, r.Who, r.From, r.Method, r.What, r.Outcome)
			}
			return tw.Flush()
		})
}
