
ms*
tabINT64**
user_idINT64**#
video_idUINT64**
äŒœ°³àŠÜ˜*
tag_idsINT64*6** 
tag_ids.lengthsINT32**X
recent_tag_idsUINT64*;*9‡Òä‚–Ôò´â“ÁˆïËşá“¡Ã§Ï¿Á†ÈCÎÅœ§»ÄŞG‹ä„±«ö…Èéİ‡ùä¼‘"*'
recent_tag_ids.lengthsINT32**
log_durationFP32*2¨P?