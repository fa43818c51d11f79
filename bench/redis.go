package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/latchkey/latchkey/kit/tcpproxy"
	"github.com/redis/go-redis/v9"
)

// RedisInstall says what to install when redis-server is missing. The
// tool never installs anything itself.
const RedisInstall = "redis-server not found: install it with `apt-get install redis-server` (Debian/Ubuntu) or put redis-server on $PATH; the peers run without Redis until then"

// ErrNoRedis means no redis-server binary was found.
var ErrNoRedis = errors.New(RedisInstall)

// FindRedis returns the path of redis-server: /usr/bin/redis-server, or
// the first on $PATH.
func FindRedis() (string, error) {
	if _, err := os.Stat("/usr/bin/redis-server"); err == nil {
		return "/usr/bin/redis-server", nil
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	return "", ErrNoRedis
}

// Redis is a redis-server child process on a loopback port with its data
// in a temporary directory, and the System that talks to it.
type Redis struct {
	cmd        *exec.Cmd
	rdb        *redis.Client
	durability string
	exited     chan struct{}
}

// Redis durability modes.
const (
	RedisEverySec = "everysec"
	RedisAlways   = "always"
)

var (
	redisRelease = redis.NewScript(`if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`)
	// redisCAS keeps a revision beside the value in a hash.
	redisCAS = redis.NewScript(`local r = redis.call('hget', KEYS[1], 'r')
if (r or '0') ~= ARGV[1] then return -1 end
local n = tonumber(ARGV[1]) + 1
redis.call('hset', KEYS[1], 'r', n, 'v', ARGV[2])
return n`)
)

// StartRedis starts redis-server with the append-only file fsynced as
// appendfsync says ("everysec" or "always") and no RDB snapshots.
func StartRedis(ctx context.Context, dir, appendfsync string, poolSize int) (*Redis, error) {
	bin, err := FindRedis()
	if err != nil {
		return nil, err
	}
	port, err := tcpproxy.FreePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", appendfsync,
		"--daemonize", "no", "--logfile", filepath.Join(dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	r := &Redis{cmd: cmd, exited: make(chan struct{}),
		durability: "Redis AOF, appendfsync " + appendfsync + " (no RDB)"}
	go func() { _ = cmd.Wait(); close(r.exited) }()
	r.rdb = redis.NewClient(&redis.Options{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), PoolSize: poolSize, MinIdleConns: min(poolSize, 64)})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err = r.rdb.Ping(ctx).Err(); err == nil {
			return r, nil
		}
		select {
		case <-r.exited:
			return nil, fmt.Errorf("redis-server exited at start; see %s", filepath.Join(dir, "redis.log"))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = r.Close()
			return nil, fmt.Errorf("redis-server did not answer PING in 10s: %w", err)
		}
	}
}

// Name implements System.
func (r *Redis) Name() string { return "redis" }

// Durability implements System.
func (r *Redis) Durability() string { return r.durability }

// Get implements System. A single Redis primary answers every read, so
// stale and linearizable reads are the same GET.
func (r *Redis) Get(ctx context.Context, key string, _ bool) error {
	err := r.rdb.Get(ctx, key).Err()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	return err
}

// Put implements System.
func (r *Redis) Put(ctx context.Context, key string, value []byte) error {
	return r.rdb.Set(ctx, key, value, 0).Err()
}

// CAS implements System with a Lua script over a revision field.
func (r *Redis) CAS(ctx context.Context, key string, value []byte, rev *uint64) error {
	n, err := redisCAS.Run(ctx, r.rdb, []string{key}, strconv.FormatUint(*rev, 10), value).Int64()
	if err != nil {
		return err
	}
	if n < 0 {
		return fmt.Errorf("redis cas on %s: revision moved", key)
	}
	*rev = uint64(n)
	return nil
}

// Scan is unsupported: Redis keeps no key order (SCAN is unordered).
func (r *Redis) Scan(context.Context, string, string, int) (int, error) {
	return 0, ErrUnsupported
}

// Acquire implements System: SET NX PX with a random token, released by a
// Lua script that deletes only its own token. Redis cannot notify a
// waiter, so a waiting acquire retries every 200 us, as client libraries do.
func (r *Redis) Acquire(ctx context.Context, name string, wait bool) (func(context.Context) error, error) {
	token := strconv.FormatInt(time.Now().UnixNano(), 36)
	for {
		ok, err := r.rdb.SetNX(ctx, name, token, 10*time.Second).Result()
		if err != nil {
			return nil, err
		}
		if ok {
			return func(ctx context.Context) error {
				return redisRelease.Run(ctx, r.rdb, []string{name}, token).Err()
			}, nil
		}
		if !wait {
			return nil, fmt.Errorf("redis lock %s is held", name)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Microsecond):
		}
	}
}

// Close stops redis-server.
func (r *Redis) Close() error {
	_ = r.rdb.Close()
	if r.cmd.Process != nil {
		_ = r.cmd.Process.Signal(os.Interrupt)
		select {
		case <-r.exited:
		case <-time.After(5 * time.Second):
			_ = r.cmd.Process.Kill()
			<-r.exited
		}
	}
	return nil
}
