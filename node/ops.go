package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/zerogrid/zerogrid/grid"
)

// The ops listener (Config.OpsListen) serves plain HTTP for the tools that
// watch a node: /metrics (Prometheus), /healthz (the process serves),
// /readyz (the node is a serving member: it knows the metadata leader, is
// in the partition table and neither draining nor leaving), and, with
// Config.OpsPprof, Go's profiler under /debug/pprof/. It carries no data
// and takes no commands; bind it to loopback or a management network.

// startOps opens the ops listener and serves it on a goroutine of the
// node's.
func (n *Node) startOps() error {
	if n.cfg.OpsListen == "" {
		return nil
	}
	lis, err := net.Listen("tcp", n.cfg.OpsListen)
	if err != nil {
		return fmt.Errorf("node: ops listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{ErrorLog: slogPrinter{n}}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if n.closing.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := n.ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	n.dashboardHandlers(mux)
	if n.cfg.OpsPprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	n.opsAddr = lis.Addr().String()
	n.ops = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.ops.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("ops listener stopped", "err", err)
		}
	}()
	n.log.Info("ops listener serving", "addr", n.opsAddr, "pprof", n.cfg.OpsPprof)
	return nil
}

// stopOps closes the ops listener, letting requests in progress finish
// until ctx ends.
func (n *Node) stopOps(ctx context.Context) {
	if n.ops == nil {
		return
	}
	if err := n.ops.Shutdown(ctx); err != nil {
		_ = n.ops.Close()
	}
}

// OpsAddr is the ops listener's address ("" when it is off).
func (n *Node) OpsAddr() string { return n.opsAddr }

// ready says why the node does not serve as a member, or nil.
func (n *Node) ready() error {
	switch {
	case n.closing.Load():
		return errors.New("shutting down")
	case n.retired.Load():
		return errors.New("removed from the cluster")
	}
	if id, _ := n.meta.Leader(); id == "" {
		return errors.New("no metadata leader known")
	}
	t := n.meta.Meta().SharedTable()
	if t == nil {
		return errors.New("no partition table yet")
	}
	for _, rec := range n.meta.Meta().Nodes() {
		if rec.ID != n.cfg.ID {
			continue
		}
		switch rec.State {
		case grid.StateDraining, grid.StateRemoved, grid.StateDead:
			return fmt.Errorf("node is %s", rec.State)
		}
		return nil
	}
	if _, ok := t.Node(n.cfg.ID); ok {
		return nil // a founding member before its record is written
	}
	return errors.New("not a member of the cluster yet")
}

// slogPrinter passes promhttp's errors to the node's log.
type slogPrinter struct{ n *Node }

func (p slogPrinter) Println(v ...any) {
	p.n.log.Warn("metrics", "err", strings.TrimSpace(fmt.Sprintln(v...)))
}
