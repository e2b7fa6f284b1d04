package datapath

import "github.com/cilium/ebpf"

// RxUnsafe is the receiver guard's flag for a socket seen splicing.
const RxUnsafe = uint64(sockhopShRxFlagsSH_RX_UNSAFE)

// RxFlags and SetRxFlags read and write a paired socket's receiver guard
// flags (sockhop_rx, keyed by its kernel address): the tests play a sender
// that read them just before they changed, a race no test can time.
func (d *Datapath) RxFlags(sk uint64) (uint64, error) {
	var v sockhopShRx
	err := d.objs.SockhopRx.Lookup(sk, &v)
	return v.Flags, err
}

func (d *Datapath) SetRxFlags(sk, flags uint64) error {
	var v sockhopShRx
	if err := d.objs.SockhopRx.Lookup(sk, &v); err != nil {
		return err
	}
	v.Flags = flags
	return d.objs.SockhopRx.Update(sk, v, ebpf.UpdateExist)
}
