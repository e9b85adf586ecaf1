package replication

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// cpuTime is the CPU time (user and system) the process used so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLogStoreAppend appends one 300-byte entry at a time from many
// groups at once, as leaders and followers do under a spread write load,
// and reports the syncs and the process's CPU time per append.
func BenchmarkLogStoreAppend(b *testing.B) {
	for _, groups := range []int{1, 32} {
		b.Run(fmt.Sprint("groups=", groups), func(b *testing.B) {
			s, err := openLogDB(filepath.Join(b.TempDir(), "raft-log"))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var next atomic.Int64
			var wg sync.WaitGroup
			cpu0 := cpuTime(b)
			b.ResetTimer()
			for g := range groups {
				wg.Add(1)
				go func() {
					defer wg.Done()
					gl := s.group(GroupID(g), nil)
					for i := uint64(1); next.Add(1) <= int64(b.N); i++ {
						if err := gl.StoreLogs([]*raft.Log{testLog(i, 1, 300)}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/append")
			st := s.stats()
			b.ReportMetric(float64(st.Commits)/float64(b.N), "syncs/append")
		})
	}
}
