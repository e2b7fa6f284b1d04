package datapath

// The BPF objects are compiled from ../../bpf by `make generate` (Debian's clang)
// and committed, so that building sockhop needs no C toolchain.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type sh_key -type sh_conn -type sh_sock -type sh_pod -type sh_ip -type sh_stat -type sh_tx -type sh_rx -type sh_pending -type sh_hazard_flags -type sh_strand -type sh_strand_state -type sh_podst -type sh_podst_stat sockhop ../../bpf/sockhop.c

// The abort iterator is its own object: it needs bpf_sock_destroy (Linux
// 6.5), which a kernel without it must not keep the datapath from loading.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel abort ../../bpf/abort.c

// The syscall guard on kernel functions is its own object too: a kernel
// that refuses BPF trampolines (fentry) must still load the datapath.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel fguard ../../bpf/fguard.c
