package node

import (
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// The dashboard is a page on the ops listener (/) that draws the grid as
// this node's metadata sees it — nodes with their capabilities, state,
// load and zone; partitions with leader, replicas and moves in flight;
// this node's scrub and job counters — from /api/cluster, polled every
// second. Its assets are embedded in the binary; there is no build step.
//
//go:embed dashboard
var dashboardFiles embed.FS

// clusterView is /api/cluster.
type clusterView struct {
	Node       string                 `json:"node"`
	Time       time.Time              `json:"time"`
	Epoch      uint64                 `json:"epoch"`
	MetaLeader string                 `json:"meta_leader"`
	Insecure   bool                   `json:"insecure"`
	Nodes      []grid.NodeRecord      `json:"nodes"`
	Partitions []partitionView        `json:"partitions"`
	Integrity  *gridpb.IntegrityStats `json:"integrity"`
	Jobs       map[string]float64     `json:"jobs"`
	Moves      float64                `json:"moves_started"`
}

type partitionView struct {
	grid.Partition
	Moving bool `json:"moving"`
	// Lag is this node's replica's apply lag (entries), when it holds one.
	Lag *uint64 `json:"lag,omitempty"`
}

func (n *Node) dashboardHandlers(mux *http.ServeMux) {
	static, _ := fs.Sub(dashboardFiles, "dashboard")
	mux.Handle("GET /", http.FileServerFS(static))
	mux.HandleFunc("GET /api/cluster", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(n.clusterView())
	})
}

func (n *Node) clusterView() clusterView {
	v := clusterView{Node: n.cfg.ID, Time: time.Now(), Insecure: n.cfg.Insecure, Integrity: n.integrity.stats(),
		Jobs: map[string]float64{}}
	v.MetaLeader, _ = n.meta.Leader()
	v.Nodes = n.meta.Meta().Nodes()
	slices.SortFunc(v.Nodes, func(a, b grid.NodeRecord) int { return strings.Compare(a.ID, b.ID) })
	lags := map[int]uint64{}
	if h := n.suspects.Load(); h != nil {
		for _, g := range h.Groups() {
			st := g.Status()
			lags[int(st.Group)] = st.CommitIndex - min(st.Applied, st.CommitIndex)
		}
	}
	if t := n.meta.Meta().SharedTable(); t != nil {
		v.Epoch = t.Epoch
		for _, p := range t.Partitions {
			pv := partitionView{Partition: p, Moving: p.Moving()}
			if lag, ok := lags[p.ID]; ok {
				pv.Lag = &lag
			}
			v.Partitions = append(v.Partitions, pv)
		}
	}
	m := n.metrics
	for _, outcome := range []string{"ok", "error"} {
		v.Jobs["tasks_"+outcome] = counterValue(m.tasksRun.WithLabelValues(outcome))
	}
	for _, kind := range []string{"retry", "hedge", "fallback"} {
		v.Jobs["attempts_"+kind] = counterValue(m.jobAttempts.WithLabelValues(kind))
	}
	v.Moves = counterValue(m.movesBegun)
	return v
}

// counterValue is a counter's current value.
func counterValue(c prometheus.Counter) float64 {
	var pb dto.Metric
	if c.Write(&pb) != nil {
		return 0
	}
	return pb.GetCounter().GetValue()
}
