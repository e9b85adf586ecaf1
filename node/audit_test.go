package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/grid"
)

// TestAuditRotates fills the audit log past its size: it moves to
// audit.log.1 (one generation kept), the new file starts small, and read
// returns the latest records last, across both files.
func TestAuditRotates(t *testing.T) {
	dir := t.TempDir()
	a, err := openAudit("n1", dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	what := strings.Repeat("x", 1000)
	n := 0
	for ; ; n++ {
		if err := a.record(grid.AuditRecord{Time: time.Now(), Node: "n1", Method: "/m", What: what, Outcome: "ok", Took: string(rune('a' + n%26))}, false); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, "audit.log.1")); err == nil {
			break
		}
		if n > 2*auditMaxBytes/1000 {
			t.Fatal("the audit log never rotated")
		}
	}
	st, err := os.Stat(filepath.Join(dir, "audit.log"))
	if err != nil || st.Size() > 2000 {
		t.Fatalf("the new audit log: %v, %v", st, err)
	}
	recs, err := a.read(10)
	if err != nil || len(recs) != 10 || recs[9].Took != string(rune('a'+n%26)) {
		t.Fatalf("last records: %d, %v", len(recs), err)
	}
	t.Logf("rotated after %d records", n+1)
}
