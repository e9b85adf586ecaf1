package test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/zerogrid/zerogrid/node/localcluster"
)

// TestOpsListener scrapes real nodes' ops listeners: /healthz and /readyz
// answer, /metrics parses as Prometheus text and counts what the test did
// (puts by method and code, the log's syncs, one leader per partition), a
// draining node (of four, so its replicas have somewhere to go) stops
// being ready, and pprof is off unless asked for.
func TestOpsListener(t *testing.T) {
	const parts = 4
	lc, c := startClusterConfig(t, localcluster.Config{Nodes: 4, Partitions: parts, Replicas: 3, Ops: true}, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	get := func(id, path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + lc.OpsAddr(id) + path)
		if err != nil {
			t.Fatalf("GET %s on %s: %v", path, id, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	for _, id := range lc.IDs() {
		if code, body := get(id, "/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
			t.Fatalf("%s /healthz: %d %q", id, code, body)
		}
		eventually(t, 30*time.Second, func() error {
			if code, body := get(id, "/readyz"); code != http.StatusOK {
				return fmt.Errorf("%s /readyz: %d %q", id, code, body)
			}
			return nil
		})
		if code, _ := get(id, "/debug/pprof/"); code != http.StatusNotFound {
			t.Fatalf("%s serves pprof (%d) without --ops-pprof", id, code)
		}
	}

	const puts = 50
	for i := range puts {
		if _, err := c.Map("kv").Put(ctx, []byte(fmt.Sprint("k", i)), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	scrape := func(id string) map[string]*dto.MetricFamily {
		t.Helper()
		code, body := get(id, "/metrics")
		if code != http.StatusOK {
			t.Fatalf("%s /metrics: %d %q", id, code, body)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
		if err != nil {
			t.Fatalf("%s /metrics does not parse: %v", id, err)
		}
		return fams
	}
	sum := func(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
		total := 0.0
		f, ok := fams[name]
		if !ok {
			return -1
		}
	metrics:
		for _, m := range f.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				total += m.GetCounter().GetValue()
			case m.Gauge != nil:
				total += m.GetGauge().GetValue()
			case m.Histogram != nil:
				total += float64(m.GetHistogram().GetSampleCount())
			}
		}
		return total
	}
	var handledPuts float64
	leaders := map[string]float64{}
	for _, id := range lc.IDs() {
		fams := scrape(id)
		handledPuts += sum(fams, "grpc_server_handled_total", map[string]string{"grpc_service": "zerogrid.v1.KV", "grpc_method": "Put", "grpc_code": "OK"})
		for _, name := range []string{"zerogrid_node_info", "zerogrid_raft_log_commits_total", "zerogrid_raft_log_sync_seconds",
			"grpc_server_handling_seconds", "zerogrid_grpc_received_bytes_total", "go_goroutines", "process_resident_memory_bytes"} {
			if v := sum(fams, name, nil); v <= 0 {
				t.Errorf("%s: %s is %v, want > 0", id, name, v)
			}
		}
		for p := range parts {
			leaders[fmt.Sprint(p)] += sum(fams, "zerogrid_raft_leader", map[string]string{"partition": fmt.Sprint(p)})
		}
	}
	// Every metric the Grafana dashboard in deploy/ plots is exported.
	dash, err := os.ReadFile(filepath.Join("..", "deploy", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	fams := scrape("n1")
	for _, name := range regexp.MustCompile(`\b(zerogrid|grpc_server|process|go)_[a-z_]+`).FindAllString(string(dash), -1) {
		if _, ok := fams[strings.TrimSuffix(name, "_bucket")]; !ok {
			t.Errorf("the dashboard plots %s, which n1 does not export", name)
		}
	}
	if handledPuts < puts {
		t.Errorf("the nodes counted %v successful KV.Put calls, want at least %d", handledPuts, puts)
	}
	for p, n := range leaders {
		if n != 1 {
			t.Errorf("partition %s has %v leaders in the metrics, want 1", p, n)
		}
	}

	if err := c.DrainNode(ctx, "n3"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		code, body := get("n3", "/readyz")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
			return fmt.Errorf("n3 /readyz while draining: %d %q", code, body)
		}
		return nil
	})
	if code, _ := get("n3", "/healthz"); code != http.StatusOK {
		t.Fatalf("n3 /healthz while draining: %d, want 200 (it still serves)", code)
	}
}
