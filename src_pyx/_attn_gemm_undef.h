/* _attn_gemm_undef.h -- forget one instruction set's intrinsic names (_attn_gemm.h
 * defines them before each instance of its SIMD kernel). */
#undef AG_VT
#undef AG_MT
#undef AG_W
#undef AG_LOADU
#undef AG_STOREU
#undef AG_LOADM
#undef AG_MASK
#undef AG_BCAST
#undef AG_VFMA
#undef AG_MUL
#undef AG_SET1
#undef AG_ZERO
#undef AG_HSUM4
