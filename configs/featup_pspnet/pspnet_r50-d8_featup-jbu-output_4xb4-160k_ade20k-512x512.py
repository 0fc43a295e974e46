# PSPNet-R50 (dilated, 1/8 output) on ADE20K with image-guided output upsampling: the
# head's 512-channel features are upsampled 1/8 -> full resolution by FeatUp's JBU stack
# (3 stages, guided by the normalised image) and classified there. The head itself is
# mmseg's PSPHead, unchanged. Everything else is mmseg's recipe.
_base_ = ['mmseg::pspnet/pspnet_r50-d8_4xb4-160k_ade20k-512x512.py']
custom_imports = dict(imports=['featup_mmseg.plugin'], allow_failed_imports=False)

model = dict(
    type='GuidedEncoderDecoder',
    output_upsampler=dict(
        type='ImageGuidedOutputUpsampler', out_stride=1, num_stages=3, key_dim=32, radius=3,
        range_kernel='softmax'))
