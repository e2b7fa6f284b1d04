package testbed

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// uringSplice moves up to n bytes from fdIn into fdOut with one
// IORING_OP_SPLICE submitted to a fresh io_uring, as an io_uring-based
// program would, and waits for its completion: the bytes moved, or the
// error the request completed with. fixed: fdIn is registered with the ring
// and named by its index (SPLICE_F_FD_IN_FIXED), as programs that register
// their sockets do.
func uringSplice(fdIn, fdOut int, n uint32, fixed bool) (int, error) {
	var p uringParams
	r1, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return 0, fmt.Errorf("io_uring_setup: %w", errno)
	}
	ring := int(r1)
	defer unix.Close(ring)
	if p.Features&uringFeatSingleMmap == 0 {
		return 0, errors.New("io_uring without IORING_FEAT_SINGLE_MMAP (Linux < 5.4)")
	}
	size := max(int(p.SqOff.Array)+int(p.SqEntries)*4, int(p.CqOff.Cqes)+int(p.CqEntries)*uringCQESize)
	rings, err := unix.Mmap(ring, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return 0, fmt.Errorf("mmap io_uring rings: %w", err)
	}
	defer unix.Munmap(rings)
	sqes, err := unix.Mmap(ring, uringOffSQEs, int(p.SqEntries)*uringSQESize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return 0, fmt.Errorf("mmap io_uring entries: %w", err)
	}
	defer unix.Munmap(sqes)

	in, flags := int32(fdIn), uint32(unix.SPLICE_F_MOVE)
	if fixed {
		fds := []int32{int32(fdIn)}
		if _, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(ring), uringRegisterFiles,
			uintptr(unsafe.Pointer(&fds[0])), 1, 0, 0); errno != 0 {
			return 0, fmt.Errorf("io_uring_register(IORING_REGISTER_FILES): %w", errno)
		}
		in, flags = 0, flags|uringSpliceFdInFixed
	}
	sqe := (*uringSQE)(unsafe.Pointer(&sqes[0]))
	*sqe = uringSQE{
		Opcode:      uringOpSplice,
		Fd:          int32(fdOut),
		Off:         ^uint64(0), // no offsets: a socket and a pipe
		SpliceOffIn: ^uint64(0),
		Len:         n,
		OpFlags:     flags,
		UserData:    1,
		SpliceFdIn:  in,
	}
	u32 := func(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&rings[off])) }
	tail := u32(p.SqOff.Tail)
	*(*uint32)(unsafe.Pointer(&rings[p.SqOff.Array+(*tail&*u32(p.SqOff.RingMask))*4])) = 0
	atomic.StoreUint32(tail, *tail+1)

	head := u32(p.CqOff.Head)
	// A signal may end the wait after the submission (the call then
	// returns 1) or before it (EINTR, nothing submitted): wait until the
	// completion is there.
	submit := uintptr(1)
	for atomic.LoadUint32(u32(p.CqOff.Tail)) == atomic.LoadUint32(head) {
		r, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(ring), submit, 1, uringEnterGetEvents, 0, 0)
		switch {
		case errno == 0:
			if r >= submit {
				submit = 0
			}
		case errno != unix.EINTR:
			return 0, fmt.Errorf("io_uring_enter: %w", errno)
		}
	}
	cqe := (*uringCQE)(unsafe.Pointer(&rings[int(p.CqOff.Cqes)+int(*head&*u32(p.CqOff.RingMask))*uringCQESize]))
	res := cqe.Res
	atomic.StoreUint32(head, *head+1)
	if res < 0 {
		return 0, unix.Errno(-res)
	}
	return int(res), nil
}

// include/uapi/linux/io_uring.h
const (
	uringOpSplice       = 30
	uringFeatSingleMmap = 1
	uringEnterGetEvents = 1
	uringOffSQEs        = 0x10000000
	uringSQESize        = 64
	uringCQESize        = 16
	uringRegisterFiles  = 2
	// SPLICE_F_FD_IN_FIXED: splice_fd_in is an index into the files
	// registered with the ring.
	uringSpliceFdInFixed = 1 << 31
)

type uringSQOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type uringCQOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, Cqes, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

type uringParams struct {
	SqEntries, CqEntries, Flags, SqThreadCPU, SqThreadIdle, Features, WqFd uint32
	Resv                                                                   [3]uint32
	SqOff                                                                  uringSQOffsets
	CqOff                                                                  uringCQOffsets
}

type uringSQE struct {
	Opcode      uint8
	Flags       uint8
	Ioprio      uint16
	Fd          int32
	Off         uint64
	SpliceOffIn uint64
	Len         uint32
	OpFlags     uint32 // splice_flags
	UserData    uint64
	BufIndex    uint16
	Personality uint16
	SpliceFdIn  int32
	_           [2]uint64
}

type uringCQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

var (
	_ [uringSQESize]byte = [unsafe.Sizeof(uringSQE{})]byte{}
	_ [uringCQESize]byte = [unsafe.Sizeof(uringCQE{})]byte{}
	_ [120]byte          = [unsafe.Sizeof(uringParams{})]byte{}
)
