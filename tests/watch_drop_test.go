package tests

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/tests/suite"
	"github.com/nats-io/nats.go"
)

// dropProxy forwards TCP to a NATS server until cut, which closes every
// proxied connection and refuses new ones until heal: a client's network
// dropping out.
type dropProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
}

func newDropProxy(t *testing.T, target string) *dropProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dropProxy{ln: ln, target: target}
	t.Cleanup(func() { _ = ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.down {
				p.mu.Unlock()
				_ = c.Close()
				continue
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				_ = c.Close()
				continue
			}
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(s, c); _ = s.Close() }()
			go func() { _, _ = io.Copy(c, s); _ = c.Close() }()
		}
	}()
	return p
}

func (p *dropProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *dropProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *dropProxy) heal() { p.mu.Lock(); p.down = false; p.mu.Unlock() }

// TestWatchSurvivesClientConnectionDrop: a watcher whose network drops for
// 3 s while keys keep changing (puts, deletes) reconnects, notices what it
// missed and resumes: afterwards every key's last event is its final
// state, and per key the revisions only grew.
func TestWatchSurvivesClientConnectionDrop(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	suite.New(t, nc, suite.Options{Shards: 3})
	c := client.New(nc)
	ctx := testCtx(t)
	proxy := newDropProxy(t, strings.TrimPrefix(srv.ClientURL(), "nats://"))
	wnc := natstest.Connect(t, proxy.url(), nats.ReconnectWait(100*time.Millisecond))
	w, err := client.New(wnc).Watch(ctx, "d:")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	var mu sync.Mutex
	got := map[string][]client.Event{}
	go func() {
		for ev := range w.Events() {
			mu.Lock()
			got[ev.Key] = append(got[ev.Key], ev)
			mu.Unlock()
		}
	}()
	final := map[string]client.Event{}
	write := func(i int) {
		k := fmt.Sprintf("d:%d", i%20)
		if i%7 == 3 {
			if _, r, err := c.Delete(ctx, k); err == nil && r > 0 {
				final[k] = client.Event{Type: client.EventDelete, Revision: r}
			}
			return
		}
		r, err := c.Put(ctx, k, fmt.Appendf(nil, "%d", i))
		if err != nil {
			t.Fatal(err)
		}
		final[k] = client.Event{Type: client.EventPut, Revision: r}
	}
	i := 0
	for ; i < 100; i++ {
		write(i)
	}
	proxy.cut()
	t0 := time.Now()
	for time.Since(t0) < 3*time.Second {
		write(i)
		i++
		time.Sleep(5 * time.Millisecond)
	}
	proxy.heal()
	for range 100 {
		write(i)
		i++
	}
	eventually(t, 30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for k, want := range final {
			evs := got[k]
			if len(evs) == 0 {
				return fmt.Errorf("no event of %s", k)
			}
			last := evs[len(evs)-1]
			if last.Revision != want.Revision || (last.Type == client.EventPut) != (want.Type == client.EventPut) {
				return fmt.Errorf("%s: last event %v@%d, want %v@%d", k, last.Type, last.Revision, want.Type, want.Revision)
			}
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	for k, evs := range got {
		for j := 1; j < len(evs); j++ {
			if evs[j].Revision <= evs[j-1].Revision {
				t.Fatalf("%s: revision %d after %d", k, evs[j].Revision, evs[j-1].Revision)
			}
		}
	}
	if w.Resumes() == 0 {
		t.Fatal("the watcher never resumed after its connection dropped")
	}
	t.Logf("%d writes, %d during the 3 s drop; %d resumes", i, i-200, w.Resumes())
}
