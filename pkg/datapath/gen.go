package datapath

// The BPF objects are compiled from ../../bpf by `make generate` (Debian's clang)
// and committed, so that building sockhop needs no C toolchain.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type sh_key -type sh_conn -type sh_sock -type sh_pod -type sh_ip -type sh_stat -type sh_tx -type sh_rx -type sh_pending -type sh_hazard_flags sockhop ../../bpf/sockhop.c
