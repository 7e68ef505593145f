"""Tests of ms_deform_attn (multi-scale deformable attention) and its deformable-aggregation core."""
