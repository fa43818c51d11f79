package procs

import (
	"io"
	"net"
	"sync"
	"time"
)

// proxy forwards TCP connections from its loopback listener to one fixed
// target (a server's cluster or client port, stable across restarts). The
// injector cuts it to partition: cutting closes the connections open now
// and refuses new ones, so both ends see the link drop at once. Same
// approach as kit/natstest's in-process partitions, for separate
// processes.
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	pairs map[net.Conn]net.Conn // accepted -> upstream, closed together
}

func newProxy(target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, target: target, pairs: map[net.Conn]net.Conn{}}
	go p.acceptLoop()
	return p, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for a, b := range p.pairs {
			a.Close()
			b.Close()
			delete(p.pairs, a)
		}
	}
}

// addrs are the remote addresses the two ends see on connections this
// proxy carries: the listener, and each upstream dial's local address.
func (p *proxy) addrs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := []string{p.ln.Addr().String()}
	for _, b := range p.pairs {
		out = append(out, b.LocalAddr().String())
	}
	return out
}

func (p *proxy) acceptLoop() {
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(conn)
	}
}

func (p *proxy) handle(down net.Conn) {
	p.mu.Lock()
	cut := p.cut
	p.mu.Unlock()
	if cut {
		down.Close()
		return
	}
	up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		down.Close()
		return
	}
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		down.Close()
		up.Close()
		return
	}
	p.pairs[down] = up
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(up, down)
	go pipe(down, up)
	<-done // either side ending ends both: a half-open link helps nobody
	down.Close()
	up.Close()
	p.mu.Lock()
	delete(p.pairs, down)
	p.mu.Unlock()
}

func (p *proxy) close() {
	p.ln.Close()
	p.setCut(true)
}

// sinkLoop accepts and closes at once: the cluster address every server
// advertises, so a route learned by gossip fails instead of bypassing the
// proxies.
func sinkLoop(l net.Listener) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		conn.Close()
	}
}

// freePort returns a loopback port free right now. The servers need
// fixed ports that survive their restarts (the proxies point at them).
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
