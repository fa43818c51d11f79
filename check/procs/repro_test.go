package procs_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchkey/latchkey/check"
	"github.com/latchkey/latchkey/check/procs"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestReproAmbiguousPublishAtHeal shows the mechanism behind the
// double-applied puts and the refused CAS that landed, both seen at
// partition heals (docs/CORRECTNESS.md, "Findings of the process faults"):
// four writers publish conditionally (Nats-Expected-Last-Subject-Sequence,
// as storage writes) straight to a shard's stream while its leader is
// isolated and healed six times; after every failed publish each reads the
// subject back from the leader and counts, per error, the publishes that
// landed anyway. A landed publish after a definite error (10071 wrong last
// sequence, 10164) is what storage's write loop misreads: it treats those
// as "the key moved", re-reads its own write, and writes again (a blind
// put) or refuses (a CAS). Odd writers publish without nats.go's own retry
// on "no responders". It fails while the hazard exists. LATCHKEY_REPRO=1;
// about 2 minutes.
func TestReproAmbiguousPublishAtHeal(t *testing.T) {
	if os.Getenv("LATCHKEY_REPRO") != "1" {
		t.Skip("set LATCHKEY_REPRO=1")
	}
	d := start(t, procs.Options{})
	stream, bucket := "KV_latchkey_shard_0", "latchkey_shard_0"
	ctx, stop := context.WithCancel(context.Background())
	var mu sync.Mutex
	landed, failed := map[string]int{}, map[string]int{}
	var wg sync.WaitGroup
	for w := range 4 {
		nc, err := nats.Connect(d.URL(), nats.IgnoreDiscoveredServers(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		subj := "$KV." + bucket + "." + jskv.EncodeKey(fmt.Sprintf("repro-%d", w))
		wg.Go(func() {
			var last uint64
			for n := 0; ctx.Err() == nil; n++ {
				val := strconv.Itoa(n)
				msg := &nats.Msg{Subject: subj, Data: []byte(val), Header: nats.Header{}}
				msg.Header.Set(jskv.HeaderExpectedLastSubjectSeq, strconv.FormatUint(last, 10))
				pctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				var opts []jetstream.PublishOpt
				if w%2 == 1 {
					// nats.go retries a publish answered "no responders"
					// by itself (twice, 250 ms apart); odd writers turn
					// that off to see what the first answer was.
					opts = append(opts, jetstream.WithRetryAttempts(0))
				}
				ack, err := js.PublishMsg(pctx, msg, opts...)
				cancel()
				if err == nil {
					last = ack.Sequence
					continue
				}
				kind := "other: " + err.Error()
				var ae *jetstream.APIError
				switch {
				case errors.Is(err, jetstream.ErrNoStreamResponse):
					kind = "ErrNoStreamResponse"
				case errors.As(err, &ae):
					kind = fmt.Sprintf("api %d", ae.ErrorCode)
				case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
					kind = "timeout"
				}
				// Read back from whoever leads now, until it answers.
				for range 50 {
					rctx, cancel := context.WithTimeout(context.Background(), time.Second)
					m, found, rerr := jskv.LeaderGet(rctx, nc, stream, subj)
					cancel()
					if rerr != nil {
						time.Sleep(100 * time.Millisecond)
						continue
					}
					if w%2 == 1 {
						kind += " (no nats.go retry)"
					}
					mu.Lock()
					failed[kind]++
					if found && string(m.Data) == val {
						landed[kind]++
					}
					mu.Unlock()
					if found {
						last = m.Seq
					}
					break
				}
			}
		})
	}
	f := check.Fault{Kind: procs.IsolateLeader, Target: 0}
	for range 6 {
		time.Sleep(3 * time.Second)
		if err := d.Inject(context.Background(), f); err != nil {
			t.Logf("inject: %v", err)
		}
		time.Sleep(8 * time.Second)
		if err := d.Heal(context.Background(), f); err != nil {
			t.Logf("heal: %v", err)
		}
	}
	time.Sleep(3 * time.Second)
	stop()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	for k, n := range failed {
		t.Logf("publish failed with %s: %d times, landed anyway %d times", k, n, landed[k])
	}
	for k, n := range landed {
		if n > 0 && !strings.HasPrefix(k, "timeout") {
			// A timeout is ambiguous by nature; a definite error is not.
			t.Errorf("%d publishes answered %s were written anyway: a retry or refusal built on that answer misreports the write", n, k)
		}
	}
}
