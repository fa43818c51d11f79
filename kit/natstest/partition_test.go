package natstest_test

import (
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/natstest"
)

// TestPartitionCutHeal checks the partition harness itself: a cut node has
// no routes (so nothing bypasses the proxies), its clients still reach it,
// messages no longer cross the cut, and Heal restores all of that. Pooled
// routes (several connections per pair) and a single connection per pair
// are both carried.
func TestPartitionCutHeal(t *testing.T) {
	for _, pool := range []int{0, -1} {
		t.Run(map[int]string{0: "pooled", -1: "unpooled"}[pool], func(t *testing.T) {
			c := natstest.StartPartitionable(t, natstest.PartitionOptions{PoolSize: pool})
			for i := range c.Nodes {
				if c.NumRoutes(i) < 2 {
					t.Fatalf("n%d has %d routes before the cut", i, c.NumRoutes(i))
				}
			}
			iso := c.Connect(t, []int{0})
			maj := c.Connect(t, []int{1})
			sub, err := maj.SubscribeSync("probe")
			if err != nil {
				t.Fatal(err)
			}
			if err := maj.Flush(); err != nil {
				t.Fatal(err)
			}
			crosses := func() bool {
				if err := iso.Publish("probe", []byte("x")); err != nil {
					t.Fatal(err)
				}
				_, err := sub.NextMsg(500 * time.Millisecond)
				return err == nil
			}
			waitFor(t, 5*time.Second, "a message to cross before the cut", crosses)

			c.Cut(0)
			if n := c.NumRoutes(0); n != 0 {
				t.Fatalf("cut n0 has %d routes", n)
			}
			// Reconnect attempts through the refusing proxies must not
			// sneak a route back in.
			time.Sleep(1500 * time.Millisecond)
			if n := c.NumRoutes(0); n != 0 {
				t.Fatalf("cut n0 has %d routes 1.5s later", n)
			}
			if !iso.IsConnected() || iso.ConnectedUrl() != c.ClientURL(0) {
				t.Fatalf("client of cut n0: connected=%v to %s", iso.IsConnected(), iso.ConnectedUrl())
			}
			if err := iso.Flush(); err != nil { // a round trip to n0 itself
				t.Fatalf("client of cut n0 cannot reach it: %v", err)
			}
			for range 3 {
				if crosses() {
					t.Fatal("a message crossed the cut")
				}
			}

			c.Heal(0)
			waitFor(t, 10*time.Second, "a message to cross after the heal", crosses)
		})
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
