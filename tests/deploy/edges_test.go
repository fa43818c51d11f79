package deploy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/check"
	"github.com/latchkey/latchkey/client"
)

// edgeCheck runs latchkey check's edge workloads against the deployment,
// through the client user only, as the outside client that first broke
// these promises did: writes at the instant TTL'd values expire, renewals
// at the instant leases end with a second client trying to take over,
// fences next to TTLs and many locks fencing one key. The deployment is
// the production shape (3 NATS servers, R3, sync always); the checks
// (porcupine with TTL expiry, lock overlap, fences, durability,
// writability) must find nothing.
func edgeCheck(ctx context.Context, t *testing.T, s *stack) {
	var out strings.Builder
	rep, err := check.Run(ctx, check.Config{
		Duration: 20 * time.Second,
		Clients:  4,
		Seed:     14,
		Edges:    check.Edges{TTLWrites: true, Renewals: true, FenceTTL: true, ManyFences: true, Keys: 48},
		Connect: func(ctx context.Context, i int) (*client.Client, error) {
			cn, err := s.dial(s.urls, "client")
			if err != nil {
				return nil, err
			}
			t.Cleanup(cn.nc.Close)
			return client.New(cn.nc, client.WithTimeout(3*time.Second)), nil
		},
		Progress: &out,
	})
	if rep != nil {
		var sum strings.Builder
		rep.Print(&sum)
		t.Logf("latchkey check against the deployment:\n%s", sum.String())
	}
	if err != nil {
		t.Fatalf("latchkey check: %v", err)
	}
}
