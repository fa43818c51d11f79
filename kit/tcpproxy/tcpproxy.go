// Package tcpproxy is a loopback TCP relay that a test or a fault injector
// can cut: cutting closes every connection it carries and refuses new ones,
// so both ends see the link drop at once, as in a network partition. The
// in-process partitionable cluster (kit/natstest) and the process-level
// fault deployment (check/procs) route NATS cluster and client connections
// through it.
package tcpproxy

import (
	"io"
	"net"
	"sync"
	"time"
)

// Proxy relays connections from its listener to one target address.
type Proxy struct {
	ln     net.Listener
	ready  chan struct{} // closed once the target is known
	closed chan struct{}

	mu     sync.Mutex
	target string
	cut    bool
	// pairs maps each accepted connection to its upstream dial; both are
	// closed together. Their addresses are what the two ends see.
	pairs map[net.Conn]net.Conn
}

// New listens on a free loopback port. Connections wait until SetTarget
// names where they go (a server's port may be known only later), or are
// dropped by Close.
func New() (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, ready: make(chan struct{}), closed: make(chan struct{}), pairs: map[net.Conn]net.Conn{}}
	go p.acceptLoop()
	return p, nil
}

// To is New and SetTarget(target) in one.
func To(target string) (*Proxy, error) {
	p, err := New()
	if err == nil {
		p.SetTarget(target)
	}
	return p, err
}

// SetTarget names the address connections are relayed to; call it once.
func (p *Proxy) SetTarget(addr string) {
	p.mu.Lock()
	p.target = addr
	p.mu.Unlock()
	close(p.ready)
}

// Addr is the proxy's listening address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut refuses (true) or admits (false) new connections; cutting also
// closes the ones open now.
func (p *Proxy) Cut(cut bool) {
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

// Addrs are the remote addresses the two ends see on connections this
// proxy carries: the listener (at the dialing end) and each upstream
// dial's local address (at the accepting end). A server's /routez or
// /connz entries match one of them exactly when they go through the proxy.
func (p *Proxy) Addrs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := []string{p.ln.Addr().String()}
	for _, b := range p.pairs {
		out = append(out, b.LocalAddr().String())
	}
	return out
}

// Close stops listening and closes every connection.
func (p *Proxy) Close() {
	close(p.closed)
	p.ln.Close()
	p.Cut(true)
}

func (p *Proxy) acceptLoop() {
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(conn)
	}
}

func (p *Proxy) handle(down net.Conn) {
	select {
	case <-p.ready:
	case <-p.closed:
		down.Close()
		return
	}
	p.mu.Lock()
	target, cut := p.target, p.cut
	p.mu.Unlock()
	if cut {
		down.Close()
		return
	}
	up, err := net.DialTimeout("tcp", target, 2*time.Second)
	if err != nil {
		down.Close()
		return
	}
	p.mu.Lock()
	if p.cut { // cut while dialing
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

// Sink accepts and closes at once, until l is closed: an address servers
// may advertise, so a route learned by gossip fails instead of bypassing
// the proxies.
func Sink(l net.Listener) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		conn.Close()
	}
}

// FreePort returns a loopback port that is free right now. Servers that
// must come back on the same port after a restart (clients and proxies
// point at it) pick theirs here before they start.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
