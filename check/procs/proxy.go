package procs

import "net"

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
