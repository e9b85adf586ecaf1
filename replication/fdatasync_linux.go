package replication

import (
	"os"
	"syscall"
)

// fdatasync flushes f's data (and the size, if it grew) to the disk.
func fdatasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
