// Package powerloss is a FUSE loopback file system that can "cut power":
// it passes every operation through to a directory underneath, but
// remembers, per file, what was written since that file's last fsync
// (the bytes it overwrote and the size it had), and Cut puts every file
// back as it was at its last fsync. That is what a machine losing power
// keeps of its page cache: nothing. A SIGKILL keeps all of it (the kernel
// still has the pages), so a killed process cannot show unsynced-data
// loss; this can.
//
// Limits, said plainly: file data is dropped at the granularity of an
// fsync of that file; metadata (creates, renames, unlinks, directory
// entries) is kept as if it were synced at once, which is kinder than a
// real disk. Pages never reach the kernel's cache (direct I/O), so what a
// process reads after Cut is what is underneath.
package powerloss

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Options configures a mount.
type Options struct {
	// LieAboutSync makes fsync succeed without making anything durable
	// (a disk that acknowledges flushes it never performs): a planted bug
	// for the self-test, under which a power cut must lose acknowledged
	// writes even with sync_interval always.
	LieAboutSync bool
	// Writeback, if positive, plays the kernel's write-back of old dirty
	// pages: a file dirty for longer than this counts as written back
	// (Linux writes back pages dirty for 30 s, dirty_expire_centisecs,
	// checked every 5 s). Zero keeps every unsynced change until Cut,
	// harsher than any real machine.
	Writeback time.Duration
}

// FS is a mounted power-loss file system.
type FS struct {
	o      Options
	server *fuse.Server
	stop   chan struct{}
	mnt    string

	mu    sync.Mutex
	dirty map[uint64]*dirtyFile // by inode of the file underneath
}

// dirtyFile is one file changed since its last fsync.
type dirtyFile struct {
	since  time.Time // first change since the last fsync
	fd     int       // our own descriptor, so a rename or unlink does not lose it
	synced int64     // its size at the last fsync
	undo   []extent
}

// extent is bytes below the synced size that a write overwrote.
type extent struct {
	off int64
	old []byte
}

// Mount serves raw at mnt (both directories must exist).
func Mount(raw, mnt string, o Options) (*FS, error) {
	p := &FS{o: o, mnt: mnt, dirty: map[uint64]*dirtyFile{}, stop: make(chan struct{})}
	var st syscall.Stat_t
	if err := syscall.Stat(raw, &st); err != nil {
		return nil, err
	}
	root := &fs.LoopbackRoot{Path: raw, Dev: uint64(st.Dev)}
	root.NewNode = func(r *fs.LoopbackRoot, _ *fs.Inode, _ string, _ *syscall.Stat_t) fs.InodeEmbedder {
		return &node{LoopbackNode: fs.LoopbackNode{RootData: r}, p: p}
	}
	root.RootNode = root.NewNode(root, nil, "", &st)
	zero := time.Duration(0)
	opts := &fs.Options{
		// No attribute or entry caching: sizes must be what is underneath
		// right after a cut.
		AttrTimeout: &zero, EntryTimeout: &zero, NegativeTimeout: &zero,
		MountOptions: fuse.MountOptions{FsName: "latchkey-powerloss", Name: "powerloss", DirectMount: true},
	}
	srv, err := fs.Mount(mnt, root.RootNode, opts)
	if err != nil {
		// fusermount, when mount(2) itself is not allowed.
		opts.MountOptions.DirectMount = false
		if srv, err = fs.Mount(mnt, root.RootNode, opts); err != nil {
			return nil, fmt.Errorf("fuse mount at %s: %w", mnt, err)
		}
	}
	p.server = srv
	go p.writebackLoop()
	return p, nil
}

func (p *FS) writebackLoop() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		p.mu.Lock()
		if p.o.Writeback > 0 {
			for ino, d := range p.dirty {
				if time.Since(d.since) > p.o.Writeback {
					syscall.Close(d.fd)
					delete(p.dirty, ino)
				}
			}
		}
		p.mu.Unlock()
	}
}

// Unmount unmounts the file system.
func (p *FS) Unmount() error {
	close(p.stop)
	p.mu.Lock()
	for _, d := range p.dirty {
		syscall.Close(d.fd)
	}
	p.dirty = map[uint64]*dirtyFile{}
	p.mu.Unlock()
	return p.server.Unmount()
}

// Lost is what a Cut dropped.
type Lost struct {
	Files int   // files put back to their last fsync
	Bytes int64 // bytes past the synced size, plus bytes overwritten
}

// Cut drops every change not fsynced, file by file. Call it only while
// nothing writes (the processes using the mount are dead), as power loss
// stops them too.
func (p *FS) Cut() (Lost, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var lost Lost
	var first error
	for ino, d := range p.dirty {
		var st syscall.Stat_t
		if err := syscall.Fstat(d.fd, &st); err == nil && st.Size > d.synced {
			lost.Bytes += st.Size - d.synced
		}
		for i := len(d.undo) - 1; i >= 0; i-- {
			e := d.undo[i]
			if _, err := syscall.Pwrite(d.fd, e.old, e.off); err != nil && first == nil {
				first = err
			}
			lost.Bytes += int64(len(e.old))
		}
		if err := syscall.Ftruncate(d.fd, d.synced); err != nil && first == nil {
			first = err
		}
		// This process's own write-back is a real fsync: the reverted
		// state must not itself be lost.
		_ = syscall.Fsync(d.fd)
		syscall.Close(d.fd)
		delete(p.dirty, ino)
		lost.Files++
	}
	return lost, first
}

// before records what a write of n bytes at off (n < 0: a truncate to
// off) through fd is about to change.
func (p *FS) before(fd int, off, n int64) syscall.Errno {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return fs.ToErrno(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.dirty[st.Ino]
	if d == nil {
		dup, err := syscall.Dup(fd)
		if err != nil {
			return fs.ToErrno(err)
		}
		d = &dirtyFile{fd: dup, synced: st.Size, since: time.Now()}
		p.dirty[st.Ino] = d
	}
	end := off + n
	if n < 0 { // truncate to off: bytes from off to the synced end go
		end = d.synced
	}
	end = min(end, d.synced)
	if off >= end {
		return 0
	}
	old := make([]byte, end-off)
	if _, err := syscall.Pread(d.fd, old, off); err != nil {
		return fs.ToErrno(err)
	}
	d.undo = append(d.undo, extent{off: off, old: old})
	return 0
}

// synced forgets the changes of the file behind fd: they are durable.
func (p *FS) synced(fd int) {
	if p.o.LieAboutSync {
		return
	}
	var st syscall.Stat_t
	if syscall.Fstat(fd, &st) != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if d := p.dirty[st.Ino]; d != nil {
		syscall.Close(d.fd)
		delete(p.dirty, st.Ino)
	}
}

// node is a loopback node whose files are wrapped.
type node struct {
	fs.LoopbackNode
	p *FS
}

var (
	_ fs.NodeOpener    = (*node)(nil)
	_ fs.NodeCreater   = (*node)(nil)
	_ fs.NodeSetattrer = (*node)(nil)
)

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return n.wrap(fh, flags), fl | fuse.FOPEN_DIRECT_IO, 0
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	in, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return in, n.wrap(fh, flags), fl | fuse.FOPEN_DIRECT_IO, 0
}

// Setattr on a path (no open file): a truncate must be recorded too.
func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && f == nil {
		fd, err := syscall.Open(n.fullPath(), syscall.O_RDWR, 0)
		if err == nil {
			errno := n.p.before(fd, int64(sz), -1)
			syscall.Close(fd)
			if errno != 0 {
				return errno
			}
		}
	}
	return n.LoopbackNode.Setattr(ctx, f, in, out)
}

func (n *node) fullPath() string {
	return n.RootData.Path + "/" + n.EmbeddedInode().Path(nil)
}

// wrap records the file's changes; a file opened O_SYNC or O_DSYNC (how
// nats-server writes with sync_interval always) has each write durable
// when it returns.
func (n *node) wrap(fh fs.FileHandle, flags uint32) fs.FileHandle {
	lf := fh.(*fs.LoopbackFile)
	fd, _ := lf.PassthroughFd()
	return &file{LoopbackFile: lf, fd: fd, p: n.p, osync: flags&(syscall.O_SYNC|syscall.O_DSYNC) != 0}
}

// file records each change before passing it on, and forgets them at
// fsync.
type file struct {
	*fs.LoopbackFile
	fd    int
	p     *FS
	osync bool
}

var (
	_ fs.FileWriter    = (*file)(nil)
	_ fs.FileFsyncer   = (*file)(nil)
	_ fs.FileSetattrer = (*file)(nil)
	_ fs.FileAllocater = (*file)(nil)
)

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if errno := f.p.before(f.fd, off, int64(len(data))); errno != 0 {
		return 0, errno
	}
	n, errno := f.LoopbackFile.Write(ctx, data, off)
	if errno == 0 && f.osync {
		// The write is durable; so, generously, is the rest of the
		// file's pending change (one record per file, not per range).
		f.p.synced(f.fd)
	}
	return n, errno
}

// Writev goes through Write, so nothing bypasses the record.
func (f *file) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	var total uint32
	for _, b := range data {
		n, errno := f.Write(ctx, b, off)
		total += n
		if errno != 0 {
			return total, errno
		}
		off += int64(n)
	}
	return total, 0
}

// PassthroughFd is refused: passthrough would let the kernel write the
// file underneath directly, past the record.
func (f *file) PassthroughFd() (int, bool) { return -1, false }

func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if errno := f.LoopbackFile.Fsync(ctx, flags); errno != 0 {
		return errno
	}
	f.p.synced(f.fd)
	return 0
}

func (f *file) Setattr(ctx context.Context, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok {
		if errno := f.p.before(f.fd, int64(sz), -1); errno != 0 {
			return errno
		}
	}
	return f.LoopbackFile.Setattr(ctx, in, out)
}

func (f *file) Allocate(ctx context.Context, off, sz uint64, mode uint32) syscall.Errno {
	if errno := f.p.before(f.fd, int64(off), int64(sz)); errno != 0 {
		return errno
	}
	return f.LoopbackFile.Allocate(ctx, off, sz, mode)
}
