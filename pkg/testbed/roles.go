package testbed

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// network picks tcp4 or tcp6 from a literal address, so that a v6 listener
// does not also take IPv4 (a dual-stack socket would hide IPv4's
// SO_ORIGINAL_DST); "tcp" for addresses that ask for dual-stack ("[::]:p"
// with DualStack set by the caller via network "tcp").
func network(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "tcp"
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is4() {
		return "tcp4"
	}
	return "tcp6"
}

func listenConfig(spec PeerSpec) net.ListenConfig {
	return net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if serr == nil && spec.DeferAccept {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 5)
			}
			if serr == nil && spec.ZeroCopy {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ZEROCOPY, 1)
			}
		})
		return errors.Join(err, serr)
	}}
}

func serve(spec PeerSpec, ready func()) error {
	var lns []net.Listener
	for _, addr := range spec.Listen {
		nw := network(addr)
		if strings.HasPrefix(addr, "dual:") {
			addr, nw = strings.TrimPrefix(addr, "dual:"), "tcp"
		}
		lc := listenConfig(spec)
		ln, err := lc.Listen(context.Background(), nw, addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		lns = append(lns, ln)
	}
	ready()
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					errc <- err
					return
				}
				go handle(spec, c.(*net.TCPConn))
			}
		}()
	}
	return <-errc
}

// ServerModes and ClientModes let other files of this package add peer
// modes (register them in an init function).
var (
	ServerModes = map[string]func(spec PeerSpec, c *net.TCPConn){}
	ClientModes = map[string]func(spec PeerSpec) (Result, error){}
)

func handle(spec PeerSpec, c *net.TCPConn) {
	defer c.Close()
	if fn, ok := ServerModes[spec.Mode]; ok && spec.Role == RoleServer {
		fn(spec, c)
		return
	}
	switch {
	case spec.Role == RoleProxy:
		proxy(spec, c)
	case spec.Mode == ModeEcho:
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	case spec.Mode == ModeSink:
		n, _ := io.CopyBuffer(io.Discard, onlyReader{c}, make([]byte, 256<<10))
		binary.Write(c, binary.LittleEndian, n)
	case spec.Mode == ModeStream:
		var hdr streamHeader
		if err := binary.Read(c, binary.LittleEndian, &hdr); err != nil || hdr.Magic != streamMagic {
			return
		}
		// The server's stream carries its identity: a client of another
		// server (another pod) sees a stream it does not expect.
		if _, _, err := exchange(c, hdr.Seed^spec.Seed, hdr.Seed, hdr.Length, int(hdr.MaxWrite)); err != nil {
			// Reset: the client must not mistake a failed check for success.
			c.SetLinger(0)
		}
	}
}

// onlyReader and onlyWriter hide ReadFrom/WriteTo, so io.Copy does a plain
// read/write loop instead of splice(2): proxies do not splice.
type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }

// proxyTarget is where a proxy forwards a connection: spec.Target, or
// where the client meant to go before REDIRECT.
func proxyTarget(spec PeerSpec, down *net.TCPConn) (string, error) {
	if spec.Target != "" {
		return spec.Target, nil
	}
	dst, err := OriginalDst(down)
	if err != nil {
		return "", err
	}
	return dst.String(), nil
}

func proxy(spec PeerSpec, down *net.TCPConn) {
	target, err := proxyTarget(spec, down)
	if err != nil {
		return
	}
	d := net.Dialer{}
	if spec.Source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(spec.Source)}
	}
	uc, err := d.Dial("tcp", target)
	if err != nil {
		down.SetLinger(0)
		return
	}
	Relay(down, uc.(*net.TCPConn))
}

// Relay copies both ways between two connections as a sidecar proxy does:
// through user space (read/write, never splice), passing a half-close on as
// a half-close and a reset as a reset. It closes both when done.
func Relay(down, up *net.TCPConn) {
	defer down.Close()
	defer up.Close()
	var wg sync.WaitGroup
	pipe := func(dst, src *net.TCPConn) {
		defer wg.Done()
		if _, err := io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, make([]byte, 64<<10)); err != nil {
			dst.SetLinger(0)
			dst.Close()
			src.Close()
			return
		}
		dst.CloseWrite()
	}
	wg.Add(2)
	go pipe(up, down)
	go pipe(down, up)
	wg.Wait()
}

// OriginalDst is where the client meant to connect before iptables
// REDIRECT (SO_ORIGINAL_DST, or IP6T_SO_ORIGINAL_DST for IPv6).
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		ap   netip.AddrPort
		oerr error
	)
	is6 := c.LocalAddr().(*net.TCPAddr).IP.To4() == nil
	rc.Control(func(fd uintptr) {
		if is6 {
			var sa unix.RawSockaddrInet6
			l := uint32(unsafe.Sizeof(sa))
			_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IPV6, 80, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), 0)
			if e != 0 {
				oerr = e
				return
			}
			port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
			ap = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
			return
		}
		var sa unix.RawSockaddrInet4
		l := uint32(unsafe.Sizeof(sa))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_IP, 80, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			oerr = e
			return
		}
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		ap = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
	})
	return ap, oerr
}

const streamMagic = 0x504f4853 // "SHOP"

type streamHeader struct {
	Magic    uint32
	MaxWrite uint32
	Seed     uint64
	Length   int64
}

// exchange writes `length` bytes of stream(sendSeed) in pseudo-random write
// sizes up to maxWrite while it reads and checks `length` bytes of
// stream(recvSeed) followed by EOF: full duplex, every byte in its place.
func exchange(c *net.TCPConn, sendSeed, recvSeed uint64, length int64, maxWrite int) (sent, verified int64, err error) {
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		sent, werr = WriteStream(c, sendSeed, length, maxWrite)
		if werr == nil {
			werr = c.CloseWrite()
		}
	}()
	verified, err = ReadStream(c, recvSeed, length)
	wg.Wait()
	return sent, verified, errors.Join(werr, err)
}

// WriteStream writes `length` bytes of the stream in pseudo-random write sizes up to maxWrite.
func WriteStream(w io.Writer, seed uint64, length int64, maxWrite int) (int64, error) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	buf := make([]byte, maxWrite)
	var pos int64
	for pos < length {
		n := logUniform(rng, maxWrite)
		if int64(n) > length-pos {
			n = int(length - pos)
		}
		Fill(buf[:n], seed, pos)
		if _, err := w.Write(buf[:n]); err != nil {
			return pos, fmt.Errorf("write at %d: %w", pos, err)
		}
		pos += int64(n)
	}
	return pos, nil
}

// ReadStream reads and checks `length` bytes of the stream with this seed, then EOF.
func ReadStream(r io.Reader, seed uint64, length int64) (int64, error) {
	buf := make([]byte, 256<<10)
	want := make([]byte, len(buf))
	var pos int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if pos+int64(n) > length {
				return pos, fmt.Errorf("%d bytes more than the %d expected", pos+int64(n)-length, length)
			}
			Fill(want[:n], seed, pos)
			if !bytes.Equal(buf[:n], want[:n]) {
				i := 0
				for buf[i] == want[i] {
					i++
				}
				return pos, fmt.Errorf("wrong byte at offset %d (of a %d-byte read at %d)", pos+int64(i), n, pos)
			}
			pos += int64(n)
		}
		if errors.Is(err, io.EOF) {
			if pos != length {
				return pos, fmt.Errorf("EOF after %d of %d bytes", pos, length)
			}
			return pos, nil
		}
		if err != nil {
			return pos, fmt.Errorf("read at %d: %w", pos, err)
		}
	}
}

// logUniform draws sizes from 1 to max with as many small writes as large.
func logUniform(rng *rand.Rand, max int) int {
	n := int(math.Exp(rng.Float64() * math.Log(float64(max)+1)))
	if n < 1 {
		n = 1
	}
	if n > max {
		n = max
	}
	return n
}

// Fill writes bytes [pos, pos+len(b)) of the stream with this seed: byte p
// is byte p%8 of splitmix64(seed + p/8), so a byte out of place is wrong.
func Fill(b []byte, seed uint64, pos int64) {
	i := 0
	for i < len(b) {
		p := pos + int64(i)
		w := splitmix64(seed + uint64(p>>3))
		if off := p & 7; off != 0 || len(b)-i < 8 {
			b[i] = byte(w >> (8 * off))
			i++
			continue
		}
		binary.LittleEndian.PutUint64(b[i:], w)
		i += 8
	}
}

func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// Dial connects to spec.Target (binding spec.SourcePort+i when set; with
// SO_ZEROCOPY set before it connects when spec.ZeroCopy).
func Dial(spec PeerSpec, i int) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: Patience(10 * time.Second)}
	if spec.SourcePort != 0 {
		d.LocalAddr = &net.TCPAddr{Port: spec.SourcePort + i}
	}
	if spec.SourcePort != 0 || spec.ZeroCopy {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				if spec.SourcePort != 0 {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
				}
				if serr == nil && spec.ZeroCopy {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ZEROCOPY, 1)
				}
			})
			return errors.Join(err, serr)
		}
	}
	c, err := d.Dial(network(spec.Target), spec.Target)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func runClient(spec PeerSpec) (Result, error) {
	start := time.Now()
	var res Result
	var err error
	switch spec.Mode {
	case ModeStream:
		res = streamClient(spec)
	case ModePingPong:
		res, err = pingPong(spec)
	case ModeBulk:
		res, err = bulk(spec)
	case ModeConnRate:
		res, err = connRate(spec)
	default:
		if fn, ok := ClientModes[spec.Mode]; ok {
			res, err = fn(spec)
			break
		}
		err = fmt.Errorf("unknown client mode %q", spec.Mode)
	}
	res.Elapsed = time.Since(start)
	return res, err
}

func streamClient(spec PeerSpec) Result {
	return streamConns(spec, streamOne)
}

// streamConns runs spec.Conns checked streams, spec.Parallel at a time, each
// with one(), and sums what they report.
func streamConns(spec PeerSpec, one func(spec PeerSpec, i int, seed uint64, maxWrite int) (sent, verified int64, err error)) Result {
	conns := max(spec.Conns, 1)
	maxWrite := max(spec.MaxWrite, 1)
	var (
		mu  sync.Mutex
		res Result
		wg  sync.WaitGroup
	)
	sem := make(chan struct{}, max(spec.Parallel, 1))
	for i := 0; i < conns; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			seed := splitmix64(uint64(time.Now().UnixNano()) ^ uint64(i)<<32)
			sent, verified, err := one(spec, i, seed, maxWrite)
			mu.Lock()
			defer mu.Unlock()
			res.Conns++
			res.BytesSent += sent
			res.BytesVerified += verified
			if err != nil {
				res.Errors = append(res.Errors, fmt.Sprintf("conn %d: received %d of %d bytes: %v", i, verified, spec.Bytes, err))
			}
		}()
	}
	wg.Wait()
	return res
}

func streamOne(spec PeerSpec, i int, seed uint64, maxWrite int) (int64, int64, error) {
	c, err := Dial(spec, i)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if spec.ConnectPause > 0 {
		time.Sleep(spec.ConnectPause)
	}
	hdr := streamHeader{Magic: streamMagic, MaxWrite: uint32(maxWrite), Seed: seed, Length: spec.Bytes}
	if err := binary.Write(c, binary.LittleEndian, hdr); err != nil {
		return 0, 0, err
	}
	return exchange(c, seed, seed^spec.ExpectSeed, spec.Bytes, maxWrite)
}

func pingPong(spec PeerSpec) (Result, error) {
	c, err := Dial(spec, 0)
	if err != nil {
		return Result{}, err
	}
	defer c.Close()
	size := max(spec.Size, 1)
	msg := make([]byte, size)
	Fill(msg, 42, 0)
	back := make([]byte, size)
	iters := max(spec.Iterations, 1)
	warm := iters / 10
	res := Result{Conns: 1, LatenciesNs: make([]int64, 0, iters)}
	for i := 0; i < warm+iters; i++ {
		t := time.Now()
		if _, err := c.Write(msg); err != nil {
			return res, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return res, err
		}
		if i >= warm {
			res.LatenciesNs = append(res.LatenciesNs, time.Since(t).Nanoseconds())
		}
		if !bytes.Equal(msg, back) {
			return res, errors.New("echo differs from what was sent")
		}
		res.BytesSent += int64(size)
		res.BytesVerified += int64(size)
	}
	return res, nil
}

func bulk(spec PeerSpec) (Result, error) {
	c, err := Dial(spec, 0)
	if err != nil {
		return Result{}, err
	}
	defer c.Close()
	buf := make([]byte, max(spec.Size, 1))
	Fill(buf, 7, 0)
	var res Result
	t := time.Now()
	for res.BytesSent < spec.Bytes {
		n := min(int64(len(buf)), spec.Bytes-res.BytesSent)
		if _, err := c.Write(buf[:n]); err != nil {
			return res, err
		}
		res.BytesSent += n
	}
	c.CloseWrite()
	var got int64
	if err := binary.Read(c, binary.LittleEndian, &got); err != nil {
		return res, fmt.Errorf("read sink's count: %w", err)
	}
	res.LatenciesNs = []int64{time.Since(t).Nanoseconds()}
	res.BytesVerified = got
	res.Conns = 1
	return res, nil
}

func connRate(spec PeerSpec) (Result, error) {
	res := Result{LatenciesNs: make([]int64, 0, spec.Iterations)}
	one := []byte{1}
	for i := 0; i < max(spec.Iterations, 1); i++ {
		t := time.Now()
		c, err := Dial(spec, 0)
		if err != nil {
			return res, err
		}
		_, err = c.Write(one)
		if err == nil {
			_, err = io.ReadFull(c, one)
		}
		c.Close()
		if err != nil {
			return res, err
		}
		res.LatenciesNs = append(res.LatenciesNs, time.Since(t).Nanoseconds())
		res.Conns++
	}
	return res, nil
}
