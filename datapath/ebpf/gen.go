package ebpf

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type addr -type svc_key -type svc_val -type slot_key -type slot_val -type backend -type aff_key -type aff_val -type range_key -type tuple -type ct_val -type rev_val -type sock_key -type sock_val -type node_key -type cfg_val -type port_key -type port_info -type svc_info -type addr_key -type spoke_scope -type spoke_kind -type spoke_svc_flags -type spoke_no_endpoints -type spoke_sets lb bpf/lb.c -- -I/usr/include/x86_64-linux-gnu
