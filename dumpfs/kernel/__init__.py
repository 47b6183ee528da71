"""Kernel introspection: facts read from the dumped kernel's own memory.

    address_space   AddressSpace, KernelMemory: the base, importing nothing else of kernel/
    symbols, printk, utsname, vmcoreinfo    read through it
    types <- btf, dwarf <- types_source     type layouts, and which source to use
    tasks <- mm     task list, then a process's memory
    context         KernelContext: one dump's kernel, each part computed once, on first use

What differs between machines is asked of `dump.arch.kernel` (dumpfs/arch/).
"""
