package main

import (
	"context"
	"testing"
)

// TestBenchClusterUsage: --cluster takes 1 or 3, and a cluster is started
// in process, so --server with --cluster 3 is refused; each is a usage
// error (exit 2) before anything starts.
func TestBenchClusterUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--cluster", "2"},
		{"--cluster", "0"},
		{"--cluster", "4"},
		{"--cluster", "-1"},
		{"--cluster", "3", "--server", "nats://127.0.0.1:4222"},
	} {
		err := benchCmd(context.Background(), args)
		if exitCode(err) != exitUsage {
			t.Errorf("%q: err %v (exit %d); want a usage error (exit %d)", args, err, exitCode(err), exitUsage)
		}
	}
}
