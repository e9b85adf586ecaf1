package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// lagThreshold: a replica further than this many entries behind its
// leader has applied is reported as lagging.
const lagThreshold = 100

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var asJSON bool
	return clientCommand(ctx, args, stderr, "status", "status [--json] [--addr ADDR]", exactly(0),
		func(fs *flag.FlagSet) {
			fs.BoolVar(&asJSON, "json", false, "print the partition table and every node's status as JSON")
		},
		func(ctx context.Context, cl *client.Client, _ []string) error {
			if !asJSON {
				return printStatus(ctx, cl, stdout)
			}
			cs, err := collectStatus(ctx, cl)
			if err != nil {
				return err
			}
			type nodeJSON struct {
				ID     string                 `json:"id"`
				Addr   string                 `json:"addr"`
				Error  string                 `json:"error,omitempty"`
				Status *gridpb.StatusResponse `json:"status,omitempty"`
			}
			out := struct {
				Table *grid.Table `json:"table"`
				Nodes []nodeJSON  `json:"nodes"`
			}{Table: cs.table}
			for _, nv := range cs.nodes {
				nj := nodeJSON{ID: nv.id, Addr: nv.addr, Status: nv.status}
				if nv.err != nil {
					nj.Error = nv.err.Error()
				}
				out.Nodes = append(out.Nodes, nj)
			}
			return printJSON(stdout, out)
		})
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// clusterStatus is every reachable node's view of its groups.
type clusterStatus struct {
	table  *grid.Table
	nodes  []nodeView
	groups map[int32]map[string]*gridpb.GroupStatus // partition → node → status
}

type nodeView struct {
	id, addr string
	status   *gridpb.StatusResponse
	err      error
}

func collectStatus(ctx context.Context, cl *client.Client) (*clusterStatus, error) {
	table, err := cl.Table(ctx)
	if err != nil {
		return nil, err
	}
	cs := &clusterStatus{table: table, groups: map[int32]map[string]*gridpb.GroupStatus{}}
	for _, nd := range table.Nodes {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cl.NodeStatus(sctx, nd.Addr)
		cancel()
		cs.nodes = append(cs.nodes, nodeView{id: nd.ID, addr: nd.Addr, status: st, err: err})
		if err != nil {
			continue
		}
		for _, g := range st.Groups {
			if cs.groups[g.Partition] == nil {
				cs.groups[g.Partition] = map[string]*gridpb.GroupStatus{}
			}
			cs.groups[g.Partition][nd.ID] = g
		}
	}
	return cs, nil
}

func printStatus(ctx context.Context, cl *client.Client, w io.Writer) error {
	cs, err := collectStatus(ctx, cl)
	if err != nil {
		return err
	}
	var insecure []string
	for _, nv := range cs.nodes {
		if nv.err == nil && nv.status.Insecure {
			insecure = append(insecure, nv.id)
		}
	}
	if len(insecure) > 0 {
		fmt.Fprintf(w, "INSECURE: %s run without TLS or authentication (--insecure): anyone who reaches them has full control\n\n", strings.Join(insecure, ", "))
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDRESS\tSTATE\tREPLICAS\tLEADS\tDISK\tINTEGRITY")
	for _, nv := range cs.nodes {
		if nv.err != nil {
			fmt.Fprintf(tw, "%s\t%s\tunreachable\t-\t-\t-\t-\n", nv.id, nv.addr)
			continue
		}
		leads := 0
		for _, g := range nv.status.Groups {
			if g.State == "Leader" && g.Partition >= 0 {
				leads++
			}
		}
		disk := fmt.Sprintf("%s (%s free)", humanBytes(nv.status.DiskBytes), humanBytes(nv.status.DiskFree))
		if nv.status.DiskLow != "" {
			disk += " FULL: " + nv.status.DiskLow
		}
		fmt.Fprintf(tw, "%s\t%s\tup\t%d\t%d\t%s\t%s\n", nv.id, nv.addr, len(nv.status.Groups)-1, leads, disk, integritySummary(nv.status.Integrity))
	}
	tw.Flush()
	fmt.Fprintln(w)

	parts := make([]int32, 0, len(cs.groups))
	for p := range cs.groups {
		parts = append(parts, p)
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PARTITION\tLEADER\tTERM\tCOMMIT\tREPLICAS (applied index)\tLAGGING")
	// A replica lags when it has applied less than its leader: the leader's
	// applied index (not its commit index, which also counts no-op entries
	// no state machine sees) covers every acknowledged write.
	for _, p := range parts {
		byNode := cs.groups[p]
		leader, term, commit, leaderApplied := "", uint64(0), uint64(0), uint64(0)
		for id, g := range byNode {
			if g.State == "Leader" {
				leader, term, commit, leaderApplied = id, g.Term, g.CommitIndex, g.AppliedIndex
			}
		}
		voters := []string{}
		for _, g := range byNode {
			if len(g.Voters) > len(voters) {
				voters = g.Voters
			}
		}
		sort.Strings(voters)
		var reps, lagging []string
		for _, id := range voters {
			g, ok := byNode[id]
			if !ok {
				reps = append(reps, id+"=down")
				lagging = append(lagging, id)
				continue
			}
			reps = append(reps, fmt.Sprintf("%s=%d", id, g.AppliedIndex))
			if leader != "" && leaderApplied > g.AppliedIndex+lagThreshold {
				lagging = append(lagging, id)
			}
		}
		name := fmt.Sprint(p)
		if p < 0 {
			name = "meta"
		}
		if leader == "" {
			leader = "(none)"
		}
		lag := strings.Join(lagging, ",")
		if lag == "" {
			lag = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", name, leader, term, commit, strings.Join(reps, " "), lag)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var moves []string
	for _, p := range cs.table.Partitions {
		if p.Moving() {
			mv := fmt.Sprintf("  partition %d:", p.ID)
			if p.Learner != "" {
				mv += " adding " + p.Learner
			}
			if p.Leaving != "" {
				mv += " removing " + p.Leaving
			}
			if p.Repair != "" {
				mv += " rebuilding corrupt replica " + p.Repair
			}
			moves = append(moves, mv)
		}
	}
	fmt.Fprintf(w, "\ntable epoch %d; replica moves in flight: %d\n", cs.table.Epoch, len(moves))
	for _, mv := range moves {
		fmt.Fprintln(w, mv)
	}
	if lost := cs.lostMajority(); len(lost) > 0 {
		fmt.Fprintf(w, "\nPARTITIONS THAT HAVE LOST THEIR MAJORITY (%d): they take no writes and no linearizable reads until recovered\n", len(lost))
		for _, l := range lost {
			fmt.Fprintln(w, "  "+l)
		}
		fmt.Fprintln(w, "  bring unreachable nodes back if you can; otherwise `zerogrid recover PARTITION` (a dry run) shows what rebuilding from the best surviving replica would lose")
	}
	for _, r := range cs.table.Recoveries {
		fmt.Fprintf(w, "recovered: partition %d from %s at %s by %s (dropped %s; table epoch %d)\n", r.Partition, r.From,
			time.UnixMilli(r.AtUnixMs).UTC().Format(time.RFC3339), r.Operator, strings.Join(r.Lost, ","), r.Epoch)
	}
	return nil
}

// lostMajority names the partitions whose healthy replicas (on a reachable
// node, not quarantined) are no majority, with what became of the others.
func (cs *clusterStatus) lostMajority() []string {
	quarantined := map[string]map[uint32]bool{}
	up := map[string]bool{}
	for _, nv := range cs.nodes {
		if nv.err != nil {
			continue
		}
		up[nv.id] = true
		quarantined[nv.id] = map[uint32]bool{}
		for _, p := range nv.status.GetIntegrity().GetQuarantined() {
			quarantined[nv.id][p] = true
		}
	}
	var out []string
	for _, p := range cs.table.Partitions {
		healthy := 0
		var bad []string
		for _, id := range p.Replicas {
			switch {
			case !up[id]:
				bad = append(bad, id+" unreachable")
			case quarantined[id][uint32(p.ID)]:
				bad = append(bad, id+" quarantined")
			default:
				healthy++
			}
		}
		if 2*healthy <= len(p.Replicas) {
			out = append(out, fmt.Sprintf("partition %d: %d of %d replicas healthy (%s)", p.ID, healthy, len(p.Replicas), strings.Join(bad, ", ")))
		}
	}
	return out
}

func humanBytes(b uint64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}
